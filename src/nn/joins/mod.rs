//! Join layers: the layers of a graph model that combine the outputs of several earlier
//! layers (a sum, a gated product, a concatenation), one file each, and the registry that
//! names them. Adding a join type is its file plus one line in [`joins!`].
use super::keys::Fields;
use super::layers::Pass;
use crate::error::Result;
use crate::onnx::graph::Scope;
use crate::tensor::{Float, Tensor};

/// One built join of a network.
pub trait Join<T: Float>: Send {
    /// y = join(xs) for a batch (each x with N first, in the order of the node's `inputs`);
    /// with `pass.grad`, caches what backward needs.
    fn forward(&mut self, xs: &[&Tensor<T>], pass: &Pass) -> Tensor<T>;
    /// Takes dL/dy and returns dL/dx of each input, in input order.
    fn backward(&mut self, dy: Tensor<T>) -> Vec<Tensor<T>>;
}

/// A join type as a model file names it: keys, shape rule, construction and ONNX form.
pub trait JoinDef: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The `type` names this definition reads.
    const TYPES: &'static [&'static str];
    /// Reads the keys (besides `type`, `name`, `inputs`) of a node whose `type` is `name`.
    fn parse(name: &str, f: &mut Fields) -> Result<Self>;
    /// The `type` name of this spec.
    fn type_name(&self) -> &'static str;
    /// Output sample shape for the inputs' sample shapes; the error says what does not fit.
    fn output_shape(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>, String>;
    /// `key = value` pairs (TOML syntax) besides `type`, `name` and `inputs`.
    fn fields(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The join for inputs of these sample shapes (already shape-checked).
    fn build<T: Float>(&self, inputs: &[Vec<usize>]) -> Box<dyn Join<T>>;
    /// Appends the join's ONNX nodes on the values `xs` (sample shapes `inputs`) and returns
    /// the output value.
    fn onnx(&self, inputs: &[Vec<usize>], xs: &[&str], cx: &mut Scope) -> Result<String, String>;
}

/// Declares each join file's module and [`JoinSpec`], and dispatches to them.
macro_rules! joins {
    ($($module:ident :: $def:ident as $variant:ident,)*) => {
        $(pub mod $module;)*

        /// One join node of a model file.
        #[derive(Clone, Debug, PartialEq)]
        pub enum JoinSpec {
            $($variant($module::$def),)*
        }

        impl JoinSpec {
            /// Every join `type` name a model file may use.
            pub fn type_names() -> Vec<&'static str> {
                let mut v = Vec::new();
                $(v.extend_from_slice(<$module::$def as JoinDef>::TYPES);)*
                v
            }
            /// The spec of a join type `name` from its keys; None when `name` is no join.
            pub fn parse_known(name: &str, f: &mut Fields) -> Option<Result<JoinSpec>> {
                $(if <$module::$def as JoinDef>::TYPES.contains(&name) {
                    return Some(<$module::$def as JoinDef>::parse(name, f).map(JoinSpec::$variant));
                })*
                None
            }
            pub fn type_name(&self) -> &'static str {
                match self { $(JoinSpec::$variant(s) => s.type_name(),)* }
            }
            pub fn output_shape(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>, String> {
                match self { $(JoinSpec::$variant(s) => s.output_shape(inputs),)* }
            }
            pub fn fields(&self) -> Vec<(&'static str, String)> {
                match self { $(JoinSpec::$variant(s) => s.fields(),)* }
            }
            pub fn build<T: Float>(&self, inputs: &[Vec<usize>]) -> Box<dyn Join<T>> {
                match self { $(JoinSpec::$variant(s) => s.build(inputs),)* }
            }
            pub fn onnx(&self, inputs: &[Vec<usize>], xs: &[&str], cx: &mut Scope) -> Result<String, String> {
                match self { $(JoinSpec::$variant(s) => s.onnx(inputs, xs, cx),)* }
            }
        }
    };
}

joins! {
    add::AddSpec as Add,
    mul::MulSpec as Mul,
    concat::ConcatSpec as Concat,
}

/// An error unless there are at least `min` inputs.
pub(crate) fn at_least(inputs: &[Vec<usize>], min: usize) -> Result<(), String> {
    if inputs.len() < min {
        return Err(format!(
            "takes at least {min} inputs (`inputs = [...]`), got {}",
            inputs.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Checks of a join's backward against central differences, in f64.
    use super::*;
    use crate::nn::layers::testing::random;

    /// The join of `table` (inline TOML) on inputs of batch shapes `shapes`: backward against
    /// central differences of E = Σ r ⊙ join(xs) for every input value.
    pub fn gradcheck(table: &str, shapes: &[Vec<usize>]) {
        let spec = parse(table);
        let samples: Vec<Vec<usize>> = shapes.iter().map(|s| s[1..].to_vec()).collect();
        let mut j = spec.build::<f64>(&samples);
        let xs: Vec<Tensor<f64>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Tensor::from_vec(s, random(s.iter().product(), 10 + i as u64)).unwrap())
            .collect();
        let refs: Vec<&Tensor<f64>> = xs.iter().collect();
        let y = j.forward(&refs, &Pass::train(0));
        let r = random(y.len(), 3);
        let dxs = j.backward(Tensor::from_vec(y.shape(), r.clone()).unwrap());
        assert_eq!(dxs.len(), xs.len());
        let h = 1e-6;
        for (k, dx) in dxs.iter().enumerate() {
            assert_eq!(dx.shape(), xs[k].shape());
            for i in 0..xs[k].len() {
                let mut energy = |d: f64| {
                    let mut moved = xs.clone();
                    moved[k].data_mut()[i] += d;
                    let refs: Vec<&Tensor<f64>> = moved.iter().collect();
                    let y = j.forward(&refs, &Pass::train(0));
                    y.data().iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
                };
                let fd = (energy(h) - energy(-h)) / (2.0 * h);
                let g = dx.data()[i];
                assert!(
                    (g - fd).abs() <= 1e-6 * (1.0 + g.abs().max(fd.abs())),
                    "{table}: input {k} [{i}] {g} vs {fd}"
                );
            }
        }
    }

    /// The join spec of inline TOML `table`.
    pub fn parse(table: &str) -> JoinSpec {
        let v: toml::Table = format!("l = {table}").parse().expect("valid TOML");
        match crate::nn::graph::parse_node(&v["l"], "test", "0".into()) {
            Ok(crate::nn::graph::Node {
                op: crate::nn::graph::Op::Join(j),
                ..
            }) => j,
            other => panic!("{table}: not a join: {other:?}"),
        }
    }
}
