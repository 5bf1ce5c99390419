//! Weight initialisation schemes (PyTorch's default, Kaiming, Xavier), all uniform.
use std::str::FromStr;

/// How a layer's weights and biases are drawn before training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's default for Conv2d and Linear: weights and biases U(±1/√fan_in).
    #[default]
    Pytorch,
    /// He uniform for ReLU nets: weights U(±√(6/fan_in)), biases 0.
    Kaiming,
    /// Glorot uniform: weights U(±√(6/(fan_in + fan_out))), biases 0.
    Xavier,
}

impl Init {
    /// (weight bound, bias bound) for a layer with these fans.
    pub fn bounds(self, fan_in: usize, fan_out: usize) -> (f64, f64) {
        let fi = fan_in.max(1) as f64;
        match self {
            Init::Pytorch => (1.0 / fi.sqrt(), 1.0 / fi.sqrt()),
            Init::Kaiming => ((6.0 / fi).sqrt(), 0.0),
            Init::Xavier => ((6.0 / (fi + fan_out.max(1) as f64)).sqrt(), 0.0),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Init::Pytorch => "pytorch",
            Init::Kaiming => "kaiming",
            Init::Xavier => "xavier",
        }
    }
}

impl FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pytorch" => Ok(Init::Pytorch),
            "kaiming" => Ok(Init::Kaiming),
            "xavier" => Ok(Init::Xavier),
            _ => Err(format!(
                "unknown initialisation `{s}` (known: pytorch, kaiming, xavier)"
            )),
        }
    }
}
