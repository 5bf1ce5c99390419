//! Filter kernels by name (sobel-x, gaussian:1.5, …) or written inline ("1,0,-1;2,0,-2;1,0,-1").

/// A kernel as (rows, cols, row-major values); `single_row` when written as one row
/// (such a kernel is 1-D for a 1-D input).
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
    pub single_row: bool,
}

const NAMES: &str = "sobel-x, sobel-y, laplacian, sharpen, box:N, gaussian:SIGMA, identity";

fn k3(values: [f64; 9]) -> Kernel {
    Kernel {
        rows: 3,
        cols: 3,
        values: values.to_vec(),
        single_row: false,
    }
}

/// A named kernel: `sobel-x` (horizontal gradient, [−1 0 1; −2 0 2; −1 0 1] as a correlation),
/// `sobel-y`, `laplacian`, `sharpen`, `box:N` (N×N mean), `gaussian:SIGMA` (normalised, radius
/// ⌈3σ⌉), `identity`. `None` if `name` is not one of them.
pub fn named(name: &str) -> Option<Result<Kernel, String>> {
    Some(Ok(match name {
        "sobel-x" => k3([-1., 0., 1., -2., 0., 2., -1., 0., 1.]),
        "sobel-y" => k3([-1., -2., -1., 0., 0., 0., 1., 2., 1.]),
        "laplacian" => k3([0., 1., 0., 1., -4., 1., 0., 1., 0.]),
        "sharpen" => k3([0., -1., 0., -1., 5., -1., 0., -1., 0.]),
        "identity" => k3([0., 0., 0., 0., 1., 0., 0., 0., 0.]),
        _ => {
            if let Some(n) = name.strip_prefix("box:") {
                return Some(match n.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => Ok(Kernel {
                        rows: n,
                        cols: n,
                        values: vec![1.0 / (n * n) as f64; n * n],
                        single_row: false,
                    }),
                    _ => Err(format!("box:N needs a size N from 1 to 1024, got `{n}`")),
                });
            }
            if let Some(s) = name.strip_prefix("gaussian:") {
                return Some(match s.parse::<f64>() {
                    Ok(sigma) if sigma.is_finite() && sigma > 0.0 && sigma <= 100.0 => {
                        let r = (3.0 * sigma).ceil() as isize;
                        let n = (2 * r + 1) as usize;
                        let mut v = Vec::with_capacity(n * n);
                        for i in -r..=r {
                            for j in -r..=r {
                                v.push((-((i * i + j * j) as f64) / (2.0 * sigma * sigma)).exp());
                            }
                        }
                        let total: f64 = v.iter().sum();
                        v.iter_mut().for_each(|x| *x /= total);
                        Ok(Kernel {
                            rows: n,
                            cols: n,
                            values: v,
                            single_row: false,
                        })
                    }
                    _ => Err(format!(
                        "gaussian:SIGMA needs a sigma in (0, 100], got `{s}`"
                    )),
                });
            }
            return None;
        }
    }))
}

/// Parses "a,b,c;d,e,f" (rows separated by `;`, values by `,` or spaces).
pub fn inline(text: &str) -> Result<Kernel, String> {
    let rows: Vec<Vec<f64>> = text
        .split(';')
        .map(|r| {
            r.split([',', ' '])
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("`{}` is not a number", v.trim()))
                })
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let cols = rows.first().map_or(0, |r| r.len());
    if cols == 0 || rows.iter().any(|r| r.len() != cols) {
        return Err(format!(
            "kernel \"{text}\": every row needs the same, non-zero number of values"
        ));
    }
    if rows.iter().flatten().any(|v| !v.is_finite()) {
        return Err(format!("kernel \"{text}\": values must be finite"));
    }
    Ok(Kernel {
        rows: rows.len(),
        cols,
        single_row: rows.len() == 1,
        values: rows.concat(),
    })
}

/// A kernel from a name or inline text; the error lists the names.
pub fn parse(spec: &str) -> Result<Kernel, String> {
    match named(spec) {
        Some(k) => k,
        None if spec.contains([',', ';']) || spec.trim().parse::<f64>().is_ok() => inline(spec),
        None => Err(format!("unknown kernel `{spec}`: give a .npy file, an inline matrix like \"1,0,-1;2,0,-2;1,0,-1\", or a name ({NAMES})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_inline() {
        assert_eq!(
            parse("1,0,-1;2,0,-2;1,0,-1").unwrap().values,
            [1., 0., -1., 2., 0., -2., 1., 0., -1.]
        );
        assert!(parse("1,2,3").unwrap().single_row);
        assert!(parse("1,2;3").is_err());
        let g = parse("gaussian:1").unwrap();
        assert_eq!((g.rows, g.cols), (7, 7));
        assert!((g.values.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(g.values[24], g.values.iter().copied().fold(0.0, f64::max));
        assert_eq!(parse("box:2").unwrap().values, [0.25; 4]);
        assert!(parse("sobel").unwrap_err().contains("sobel-x"));
        assert!(parse("box:0").is_err());
    }
}
