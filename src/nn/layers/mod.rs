//! Layer types, one file each, and the registry that names them. A layer file owns its
//! model-file keys, shape rule, parameters and buffers, and its forward/backward pair: forward
//! caches exactly what backward needs; backward takes dOut, returns dIn and adds into the
//! parameter gradients. Adding a layer type is its file plus one line in [`registry!`].
use super::init::Init;
use super::keys::{Ctx, Fields};
use crate::error::{Error, Result};
use crate::onnx::graph::Scope;
use crate::ops::conv::Epilogue;
use crate::tensor::{Float, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::any::Any;
use toml::Value;

/// A trainable tensor and its accumulated gradient (same shape).
#[derive(Clone, Debug)]
pub struct Param<T> {
    pub value: Tensor<T>,
    pub grad: Tensor<T>,
}

impl<T: Float> Param<T> {
    /// Values drawn from U(−bound, bound) (zeros for bound 0), in order from `rng`.
    pub fn uniform(shape: &[usize], bound: f64, rng: &mut ChaCha8Rng) -> Self {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                if bound > 0.0 {
                    T::of(rng.gen_range(-bound..bound))
                } else {
                    T::zero()
                }
            })
            .collect();
        Param::of(Tensor::from_vec(shape, data).expect("length is the shape's product"))
    }

    /// A parameter holding `value`, its gradient zero.
    pub fn of(value: Tensor<T>) -> Self {
        let grad = Tensor::zeros(value.shape());
        Param { value, grad }
    }
}

/// State that is saved with the weights but not trained (PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer<T> {
    /// A float tensor, such as BatchNorm's running mean.
    Float(Tensor<T>),
    /// A counter, saved as an int64 scalar (BatchNorm's `num_batches_tracked`).
    Count(u64),
}

/// A layer's tensors with their state_dict names relative to the layer ("weight",
/// "body.0.bias"), in state_dict order.
pub type Named<'a, X> = Vec<(String, &'a X)>;
pub type NamedMut<'a, X> = Vec<(String, &'a mut X)>;

/// What one forward pass is: training or inference, and where its random draws come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass<'a> {
    /// Training mode: batch statistics, dropout.
    pub train: bool,
    /// Cache what backward needs (training, or gradients through inference mode).
    pub grad: bool,
    /// The step's random key: a layer's draws for a sample are a function of (key, the
    /// layer's salt, the sample's row in the whole batch) alone, so they do not depend on how
    /// the batch is split between threads.
    pub key: u64,
    /// Row of this part's first sample in the whole batch.
    pub first_row: usize,
    /// When this part is one shard of a training batch: how the layers that need the whole
    /// batch (BatchNorm's statistics) see the other shards' samples.
    pub sync: Option<ShardSync<'a>>,
}

/// One shard's handle on the exchange between the shards of a training batch.
#[derive(Clone, Copy)]
pub struct ShardSync<'a> {
    /// This shard's place among the shards that run in this process.
    pub shard: usize,
    pub exchange: &'a std::sync::Arc<dyn Exchange>,
}

impl ShardSync<'_> {
    /// The handle kept past the pass (by a layer whose backward exchanges too).
    pub fn owned(&self) -> (usize, std::sync::Arc<dyn Exchange>) {
        (self.shard, self.exchange.clone())
    }
}

impl std::fmt::Debug for ShardSync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardSync({})", self.shard)
    }
}

impl PartialEq for ShardSync<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.shard == other.shard && std::sync::Arc::ptr_eq(self.exchange, other.exchange)
    }
}
impl Eq for ShardSync<'_> {}

/// Values exchanged between the shards of one training batch, which may run in other
/// processes: every shard calls [`Exchange::gather`] at the same points of its pass.
pub trait Exchange: Send + Sync {
    /// Shard `shard`'s values (the same count from every shard: per-channel partial sums,
    /// say); returns every shard's, in batch order.
    fn gather(&self, shard: usize, mine: Vec<f64>) -> std::sync::Arc<Vec<f64>>;
}

impl Pass<'_> {
    /// Inference that caches nothing: running statistics, no dropout, no backward to come.
    pub fn is_inference(&self) -> bool {
        !self.train && !self.grad
    }

    /// Every shard's values, in batch order, when this part is one shard of a batch; else
    /// `mine` alone, this part being the whole batch.
    pub fn gather(&self, mine: Vec<f64>) -> std::sync::Arc<Vec<f64>> {
        match self.sync {
            Some(s) => s.exchange.gather(s.shard, mine),
            None => std::sync::Arc::new(mine),
        }
    }
}

impl Pass<'static> {
    /// Inference: no caches, running statistics, no dropout.
    pub const INFER: Pass<'static> = Pass {
        train: false,
        grad: false,
        key: 0,
        first_row: 0,
        sync: None,
    };

    /// A training pass of the whole batch with random key `key`.
    pub fn train(key: u64) -> Pass<'static> {
        Pass {
            train: true,
            grad: true,
            key,
            first_row: 0,
            sync: None,
        }
    }

    /// Inference mode (running statistics, no dropout) that still caches for backward.
    pub const FROZEN: Pass<'static> = Pass {
        train: false,
        grad: true,
        key: 0,
        first_row: 0,
        sync: None,
    };
}

/// Lets the fusion pass look inside and take apart boxed layers.
pub trait AsAny: Any {
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<X: Any> AsAny for X {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// One built layer of a network.
pub trait Layer<T: Float>: AsAny + Send {
    /// y = layer(x) for a batch; with `pass.grad`, caches what backward needs.
    fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T>;
    /// Inference on borrowed samples x with `shape` (N first), so that the rows of a batch
    /// need no copy of their own. Layers that only read their input override it.
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.forward(Tensor::copy_of(shape, x), &Pass::INFER)
    }
    /// Inference of this layer followed by `next` as one pass, where this layer can fold the
    /// next one in (a convolution, a BatchNorm after it), then `tail` on the result (what a
    /// residual block does after its body); None to run them apart.
    fn infer_with_next(
        &mut self,
        _next: &dyn Layer<T>,
        _x: &[T],
        _shape: &[usize],
        _tail: Epilogue<'_, T>,
    ) -> Option<Tensor<T>> {
        None
    }
    /// Whether a training forward keeps its input, unchanged, until backward, lending it by
    /// [`Layer::kept_input`]: a residual block reads its identity shortcut there instead of
    /// a copy of its own.
    fn keeps_input(&self) -> bool {
        false
    }
    /// The input kept by the last training forward, when [`Layer::keeps_input`].
    fn kept_input(&self) -> Option<&Tensor<T>> {
        None
    }
    /// Takes dL/dy, adds into the parameter gradients, returns dL/dx when `need_dx`.
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>>;
    /// The parameters, named relative to the layer.
    fn params(&self) -> Named<'_, Param<T>> {
        Vec::new()
    }
    fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        Vec::new()
    }
    /// The buffers, named relative to the layer.
    fn buffers(&self) -> Named<'_, Buffer<T>> {
        Vec::new()
    }
    fn buffers_mut(&mut self) -> NamedMut<'_, Buffer<T>> {
        Vec::new()
    }
    /// How many times a training step (forward and backward) calls [`Pass::gather`]: layers
    /// that need the whole batch (batch statistics) exchange values with the other shards.
    fn exchanges(&self) -> usize {
        0
    }
    /// The nested sequences of a container layer, for passes over the whole network.
    fn children_mut(&mut self) -> Vec<&mut Seq<T>> {
        Vec::new()
    }
    /// Frees what the layer keeps between training steps only to reuse it (a BatchNorm's
    /// last x̂, a convolution's last dY), before passes that do not need it.
    fn release(&mut self) {
        for child in self.children_mut() {
            child.release();
        }
    }
}

/// `weight` and, if present, `bias` (PyTorch's names).
pub fn weight_bias<'a, T>(w: &'a Param<T>, b: Option<&'a Param<T>>) -> Named<'a, Param<T>> {
    std::iter::once(("weight".to_string(), w))
        .chain(b.map(|b| ("bias".to_string(), b)))
        .collect()
}

/// Mutable variant of [`weight_bias`].
pub fn weight_bias_mut<'a, T>(
    w: &'a mut Param<T>,
    b: Option<&'a mut Param<T>>,
) -> NamedMut<'a, Param<T>> {
    std::iter::once(("weight".to_string(), w))
        .chain(b.map(|b| ("bias".to_string(), b)))
        .collect()
}

/// The state_dict name of tensor `local` of the module at `path`: `{path}.{local}`, or the
/// path alone for a tensor that is the module's own (`local` empty: ConvNeXt's
/// `layer_scale`), as PyTorch names a parameter registered on a block.
pub fn tensor_name(path: &str, local: &str) -> String {
    match (path.is_empty(), local.is_empty()) {
        (true, _) => local.to_string(),
        (false, true) => path.to_string(),
        (false, false) => format!("{path}.{local}"),
    }
}

/// `items` named as tensors of the module at `path` ([`tensor_name`]).
pub fn prefixed<X>(path: &str, items: Vec<(String, X)>) -> Vec<(String, X)> {
    items
        .into_iter()
        .map(|(n, x)| (tensor_name(path, &n), x))
        .collect()
}

pub(crate) const NO_CACHE: &str = "backward called without a training forward pass";

/// Layers in sequence; `paths[i]` is layer i's module path (the prefix of its tensors'
/// names: its position among the specs it was built from, or its graph node's path), which
/// after fusion is the path of the first spec layer it merged.
pub struct Seq<T> {
    pub layers: Vec<Box<dyn Layer<T>>>,
    pub paths: Vec<String>,
    /// The network's spent inference outputs, for the next ones ([`Recycled`]).
    pub recycled: Shared<Recycled<T>>,
}

impl<T: Float> Seq<T> {
    pub fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        if pass.is_inference() {
            // The same passes as inference on borrowed samples.
            return self.infer(x.data(), x.shape());
        }
        self.layers.iter_mut().fold(x, |h, l| l.forward(h, pass))
    }

    /// Inference on borrowed samples: the first layer reads them in place. A layer that can
    /// take the next one in ([`Layer::infer_with_next`]) runs both.
    pub fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.infer_then(x, shape, Epilogue::default())
    }

    /// [`Seq::infer`], then `tail` on the output: inside the last layer's kernel where the
    /// sequence ends in a pair that [`Layer::infer_with_next`] runs, else as a pass of its own.
    pub fn infer_then(&mut self, x: &[T], shape: &[usize], tail: Epilogue<'_, T>) -> Tensor<T> {
        let mut h: Option<Tensor<T>> = None;
        let mut i = 0;
        let mut tail_done = false;
        while i < self.layers.len() {
            let (xs, sh) = h.as_ref().map_or((x, shape), |t| (t.data(), t.shape()));
            let last_pair = i + 2 == self.layers.len();
            if let [l, next, ..] = &mut self.layers[i..] {
                let t = if last_pair { tail } else { Epilogue::default() };
                if let Some(y) = l.infer_with_next(&**next, xs, sh, t) {
                    if let Some(spent) = h.replace(y) {
                        self.recycled.lock().put(spent);
                    }
                    tail_done = last_pair;
                    i += 2;
                    continue;
                }
            }
            let l = &mut self.layers[i];
            h = Some(match h.take() {
                Some(t) => l.forward(t, &Pass::INFER),
                None => l.infer(x, shape),
            });
            i += 1;
        }
        let mut h = h.unwrap_or_else(|| Tensor::copy_of(shape, x));
        if !tail_done {
            tail.apply_at(0, h.data_mut());
        }
        h
    }

    /// [`Layer::release`] of every layer.
    pub fn release(&mut self) {
        self.layers.iter_mut().for_each(|l| l.release());
    }

    /// Back-propagates dy; layer 0 computes its input gradient only when `need_dx`.
    pub fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let mut d = dy;
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            d = l.backward(d, i > 0 || need_dx)?;
        }
        Some(d)
    }

    /// Parameters named `{index}.{name}`, in state_dict order.
    pub fn params(&self) -> Named<'_, Param<T>> {
        let mut out = Vec::new();
        for (l, p) in self.layers.iter().zip(&self.paths) {
            out.extend(prefixed(p, l.params()));
        }
        out
    }

    pub fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        let mut out = Vec::new();
        for (l, p) in self.layers.iter_mut().zip(&self.paths) {
            out.extend(prefixed(p, l.params_mut()));
        }
        out
    }

    /// Buffers named `{index}.{name}`, in state_dict order.
    pub fn buffers(&self) -> Named<'_, Buffer<T>> {
        let mut out = Vec::new();
        for (l, p) in self.layers.iter().zip(&self.paths) {
            out.extend(prefixed(p, l.buffers()));
        }
        out
    }

    pub fn buffers_mut(&mut self) -> NamedMut<'_, Buffer<T>> {
        let mut out = Vec::new();
        for (l, p) in self.layers.iter_mut().zip(&self.paths) {
            out.extend(prefixed(p, l.buffers_mut()));
        }
        out
    }

    /// [`Layer::exchanges`] of the whole sequence.
    pub fn exchanges(&self) -> usize {
        self.layers.iter().map(|l| l.exchanges()).sum()
    }
}

/// What a layer's construction draws on: the weight initialisation, the random stream of
/// initial values (drawn in spec order), and the salts that tell random layers apart.
pub struct BuildCx<'a> {
    pub init: Init,
    pub rng: &'a mut ChaCha8Rng,
    salts: u64,
    /// Working buffers that every layer of this network shares, one of each type.
    shared: Vec<std::sync::Arc<dyn Any + Send + Sync>>,
}

impl<'a> BuildCx<'a> {
    pub fn new(init: Init, rng: &'a mut ChaCha8Rng) -> Self {
        BuildCx {
            init,
            rng,
            salts: 0,
            shared: Vec::new(),
        }
    }

    /// The working buffer of type X that every layer built with this context shares: the
    /// layers of one network run one at a time, so one set of kernel buffers serves them all
    /// (a set per convolution held 74 MB for ResNet-20 at batch 128). Each copy of a network
    /// (a shard's replica) is built with a context of its own, so copies never share.
    pub fn shared<X: Default + Send + 'static>(&mut self) -> Shared<X> {
        for s in &self.shared {
            if let Ok(x) = s.clone().downcast::<std::sync::Mutex<X>>() {
                return Shared(x);
            }
        }
        let x = std::sync::Arc::new(std::sync::Mutex::new(X::default()));
        self.shared.push(x.clone());
        Shared(x)
    }

    /// A number no other random layer of this network has (the same in every copy).
    pub fn salt(&mut self) -> u64 {
        self.salts += 1;
        self.salts
    }
}

/// A working buffer shared by the layers of one network ([`BuildCx::shared`]).
pub struct Shared<X>(std::sync::Arc<std::sync::Mutex<X>>);

/// A buffer of its own, shared with no other layer (for layers built outside a network).
impl<X: Default> Default for Shared<X> {
    fn default() -> Self {
        Shared(std::sync::Arc::new(std::sync::Mutex::new(X::default())))
    }
}

impl<X> Shared<X> {
    /// The buffer, for one kernel call. Its contents never matter to the next user (kernels
    /// never read what they did not write), so a panic that left it half-written is no harm.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, X> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tensors that the passes of one network have finished with, kept for the next buffer of the
/// same size ([`BuildCx::shared`]): a new one is filled with zeros before a kernel overwrites
/// every value, which was 4.6 % of ResNet-20's inference. Training's backward hands on spent
/// inputs the same way (a convolution's dx, a residual block's copies).
pub struct Recycled<T> {
    free: Vec<Vec<T>>, // oldest first
}

impl<T> Default for Recycled<T> {
    fn default() -> Self {
        Recycled { free: Vec::new() }
    }
}

impl<T: Float> Recycled<T> {
    /// Buffers kept at most: a residual block hands back two (its input and its body's first
    /// output) for the two it takes, and a new stage's sizes push out the last stage's.
    /// ResNet-20 inference ran as fast with 2 as with 4 (267–274 against 270–273 ms), and a
    /// 3-epoch run on 6,000 Fashion images peaked 3 MB lower (234 against 237 MB).
    const KEEP: usize = 2;

    /// Keeps t's buffer for a later [`Recycled::take`], in place of the oldest when full.
    pub fn put(&mut self, t: Tensor<T>) {
        self.free.push(t.into_data());
        if self.free.len() > Self::KEEP {
            self.free.remove(0);
        }
    }

    /// Frees every kept buffer.
    pub fn clear(&mut self) {
        self.free.clear();
    }

    /// A tensor of `shape` for a kernel that writes every value: a kept buffer of that length
    /// with its old values, else zeros.
    pub fn take(&mut self, shape: &[usize]) -> Tensor<T> {
        let len: usize = shape.iter().product();
        match self.free.iter().rposition(|v| v.len() == len) {
            Some(i) => {
                Tensor::from_vec(shape, self.free.remove(i)).expect("a buffer of that length")
            }
            None => Tensor::zeros(shape),
        }
    }
}

/// Kind of a tensor a layer declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Trained.
    Param,
    /// Saved, not trained: a float tensor.
    Buffer,
    /// Saved, not trained: an int64 counter.
    Count,
}

/// One tensor of a layer: its state_dict name relative to the layer, shape and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

impl TensorInfo {
    pub fn param(name: &str, shape: &[usize]) -> Self {
        TensorInfo {
            name: name.into(),
            shape: shape.to_vec(),
            kind: TensorKind::Param,
        }
    }
    pub fn buffer(name: &str, shape: &[usize]) -> Self {
        TensorInfo {
            name: name.into(),
            shape: shape.to_vec(),
            kind: TensorKind::Buffer,
        }
    }
}

/// A layer type as a model file names it: keys, shape rule, tensors and construction.
pub trait LayerDef: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The `type` names this definition reads.
    const TYPES: &'static [&'static str];
    /// Reads the keys of a layer table whose `type` is `name`, one of [`LayerDef::TYPES`].
    fn parse(name: &str, f: &mut Fields) -> Result<Self>;
    /// The `type` name of this spec.
    fn type_name(&self) -> &'static str;
    /// Output sample shape for an input sample shape ([C, H, W] or [F]); the error says what
    /// does not fit.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String>;
    /// Parameters and buffers for an input shape (already checked), in state_dict order.
    fn tensors(&self, _input: &[usize]) -> Vec<TensorInfo> {
        Vec::new()
    }
    /// `key = value` pairs (TOML syntax) besides `type`, every key written out; `multiline`
    /// lets an array span lines (at the top level, not inside an inline table).
    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Nested layer sequences with their name ("body", "shortcut") and input shape.
    fn children(&self) -> Vec<(&'static str, &[LayerSpec])> {
        Vec::new()
    }
    /// Whether the layer is an element-wise function f (an activation), which plots draw.
    fn elementwise(&self) -> bool {
        false
    }
    /// The layer for inputs of sample shape `input` (already shape-checked).
    fn build<T: Float>(&self, input: &[usize], cx: &mut BuildCx) -> Box<dyn Layer<T>>;
    /// Appends the layer's inference-mode ONNX nodes on value `x` (sample shape `input`,
    /// already checked) and returns the output value, or why the layer has no ONNX form.
    fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String>;
}

/// Declares each layer file's module and [`LayerSpec`], one variant per layer definition,
/// and dispatches to them.
macro_rules! registry {
    ($($module:ident :: $def:ident as $variant:ident,)*) => {
        $(pub mod $module;)*

        /// One layer of a model file: the spec of one registered layer type.
        #[derive(Clone, Debug, PartialEq)]
        pub enum LayerSpec {
            $($variant($module::$def),)*
        }

        impl LayerSpec {
            /// Every `type` name a model file may use.
            pub fn type_names() -> Vec<&'static str> {
                let mut v = Vec::new();
                $(v.extend_from_slice(<$module::$def as LayerDef>::TYPES);)*
                v
            }
            /// The spec of a layer type `name` from its keys; None when `name` is no layer type.
            pub fn parse_known(name: &str, f: &mut Fields) -> Option<Result<LayerSpec>> {
                $(if <$module::$def as LayerDef>::TYPES.contains(&name) {
                    return Some(<$module::$def as LayerDef>::parse(name, f).map(LayerSpec::$variant));
                })*
                None
            }
            /// The `type` name used in model files.
            pub fn type_name(&self) -> &'static str {
                match self { $(LayerSpec::$variant(s) => s.type_name(),)* }
            }
            /// Output sample shape for an input sample shape; the error says what does not fit.
            pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
                match self { $(LayerSpec::$variant(s) => s.output_shape(input),)* }
            }
            /// Parameters and buffers for an input shape, in state_dict order.
            pub fn tensors(&self, input: &[usize]) -> Vec<TensorInfo> {
                match self { $(LayerSpec::$variant(s) => s.tensors(input),)* }
            }
            fn fields(&self, multiline: bool) -> Vec<(&'static str, String)> {
                match self { $(LayerSpec::$variant(s) => s.fields(multiline),)* }
            }
            /// Whether the layer is an element-wise function (an activation).
            pub fn elementwise(&self) -> bool {
                match self { $(LayerSpec::$variant(s) => s.elementwise(),)* }
            }
            /// Nested sequences ("body", "shortcut") of a container layer.
            pub fn children(&self) -> Vec<(&'static str, &[LayerSpec])> {
                match self { $(LayerSpec::$variant(s) => s.children(),)* }
            }
            /// The built layer for inputs of sample shape `input` (already shape-checked).
            pub fn build<T: Float>(&self, input: &[usize], cx: &mut BuildCx) -> Box<dyn Layer<T>> {
                match self { $(LayerSpec::$variant(s) => s.build(input, cx),)* }
            }
            /// The layer's ONNX nodes on value `x` (see [`LayerDef::onnx`]).
            pub fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
                match self { $(LayerSpec::$variant(s) => s.onnx(input, x, cx),)* }
            }
        }
    };
}

registry! {
    conv2d::Conv2dSpec as Conv2d,
    pool2d::PoolSpec as Pool,
    activation::ActivationSpec as Activation,
    leaky_relu::LeakyReluSpec as LeakyRelu,
    elu::EluSpec as Elu,
    gelu::GeluSpec as Gelu,
    silu::SiluSpec as Silu,
    flatten::FlattenSpec as Flatten,
    linear::LinearSpec as Linear,
    residual::ResidualSpec as Residual,
    batchnorm::BatchNormSpec as BatchNorm,
    dropout::DropoutSpec as Dropout,
    adaptive_pool::AdaptivePoolSpec as AdaptivePool,
    slice::SliceSpec as Slice,
    channel_shuffle::ChannelShuffleSpec as ChannelShuffle,
}

impl LayerSpec {
    /// Number of trained scalars for an input shape (already checked).
    pub fn param_count(&self, input: &[usize]) -> usize {
        self.count(input, TensorKind::Param)
    }

    /// Number of saved, untrained scalars (buffers; a counter counts one).
    pub fn buffer_count(&self, input: &[usize]) -> usize {
        self.count(input, TensorKind::Buffer) + self.count(input, TensorKind::Count)
    }

    fn count(&self, input: &[usize], kind: TensorKind) -> usize {
        self.tensors(input)
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| crate::nn::spec::elements(&t.shape).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add)
    }

    /// `key = value` pairs of this layer in TOML syntax, `type` first.
    pub fn toml_fields(&self, multiline: bool) -> Vec<(&'static str, String)> {
        let mut f = vec![("type", format!("\"{}\"", self.type_name()))];
        f.extend(self.fields(multiline));
        f
    }

    /// This layer as an inline TOML table.
    pub fn inline_toml(&self) -> String {
        let kv: Vec<String> = self
            .toml_fields(false)
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        format!("{{ {} }}", kv.join(", "))
    }
}

/// Parses one layer table; `path` names it in errors ("3", "2.body.1").
pub fn parse_layer(v: &Value, source: &str, path: String) -> Result<LayerSpec> {
    let at = |msg: String| Error::Model {
        source_name: source.into(),
        layer: Some(format!("layer {path}")),
        msg,
    };
    let Some(table) = v.as_table() else {
        return Err(at("must be a table".into()));
    };
    let kind = match table.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(at(format!("`type` must be a string, got {v}"))),
        None => return Err(at("missing required key `type`".into())),
    };
    let ctx = Ctx {
        source,
        path: path.clone(),
        kind: kind.clone(),
    };
    let mut f = Fields::new(table, &ctx);
    let spec = match LayerSpec::parse_known(&kind, &mut f) {
        Some(spec) => spec?,
        None => {
            return Err(ctx.err(format!(
                "unknown layer type `{kind}` (known: {})",
                LayerSpec::type_names().join(", ")
            )))
        }
    };
    f.finish()?;
    Ok(spec)
}

/// Parses a non-empty array of layer tables under `key` of a container layer; the layers'
/// paths in errors are `{path}.{what}.{j}`, as their tensors' names.
pub fn parse_sequence(
    f: &mut Fields,
    key: &'static str,
    what: &str,
    required: bool,
) -> Result<Option<Vec<LayerSpec>>> {
    let items = match f.get(key) {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => {
            return Err(f.err(format!(
                "key `{key}` must be a non-empty array of layer tables"
            )))
        }
        None if required => return Err(f.err(format!("missing required key `{key}`"))),
        None => return Ok(None),
    };
    let ctx = f.ctx;
    items
        .iter()
        .enumerate()
        .map(|(j, l)| parse_layer(l, ctx.source, format!("{}.{what}.{j}", ctx.path)))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The output shape of layers in sequence, each checked to be non-empty and bounded;
/// errors name the failing layer as `{what} layer j (type)`.
pub fn sequence_shape(
    specs: &[LayerSpec],
    input: &[usize],
    what: &str,
) -> Result<Vec<usize>, String> {
    let mut s = input.to_vec();
    for (j, l) in specs.iter().enumerate() {
        s = l
            .output_shape(&s)
            .map_err(|e| format!("{what} layer {j} ({}): {e}", l.type_name()))?;
        if crate::nn::spec::elements(&s).is_none_or(|n| n == 0 || n > crate::nn::spec::MAX_ELEMENTS)
        {
            return Err(format!(
                "{what} layer {j} ({}): the output shape {s:?} is empty or has more than {} elements",
                l.type_name(),
                crate::nn::spec::MAX_ELEMENTS
            ));
        }
    }
    Ok(s)
}

/// Builds the layers of `specs` in sequence, one per spec, on inputs of sample shape `input`;
/// layer j's module path is `j`.
pub fn build_sequence<T: Float>(specs: &[LayerSpec], input: &[usize], cx: &mut BuildCx) -> Seq<T> {
    let mut shape = input.to_vec();
    let mut layers = Vec::with_capacity(specs.len());
    for s in specs {
        layers.push(s.build(&shape, cx));
        shape = s.output_shape(&shape).expect("shape-checked spec");
    }
    Seq {
        layers,
        paths: (0..specs.len()).map(|j| j.to_string()).collect(),
        recycled: cx.shared(),
    }
}

/// The ONNX nodes of `specs` in sequence on value `x` (sample shape `input`), each layer in
/// the scope of its index; the error names the layer that has no ONNX form.
pub fn sequence_onnx(
    specs: &[LayerSpec],
    input: &[usize],
    x: &str,
    cx: &mut Scope,
) -> Result<String, String> {
    let mut shape = input.to_vec();
    let mut v = x.to_string();
    for (j, l) in specs.iter().enumerate() {
        let mut c = cx.child(&j.to_string());
        v = l
            .onnx(&shape, &v, &mut c)
            .map_err(|e| format!("layer {} ({}): {e}", c.path(), l.type_name()))?;
        shape = l.output_shape(&shape)?;
    }
    Ok(v)
}

/// f(z) and f'(z) of the element-wise layer `table` (inline TOML, or a bare type name) at
/// each z, computed by the layer itself in f64: forward, then backward of ones. `source`
/// names where `table` came from in errors.
pub fn sample_activation(
    table: &str,
    zs: &[f64],
    source: &str,
) -> Result<(LayerSpec, Vec<f64>, Vec<f64>)> {
    let text = if table.trim_start().starts_with('{') {
        table.to_string()
    } else {
        format!("{{ type = \"{}\" }}", table.trim())
    };
    let v: toml::Table = format!("f = {text}")
        .parse()
        .map_err(|e: toml::de::Error| {
            Error::invalid(format!("{source}: `{table}`: {}", e.message()))
        })?;
    let table_value = v
        .get("f")
        .ok_or_else(|| Error::invalid(format!("{source}: `{table}` is not a layer table")))?;
    let spec = parse_layer(table_value, source, "0".into())?;
    if !spec.elementwise() {
        return Err(Error::invalid(format!(
            "{source}: `{}` is not an element-wise activation",
            spec.type_name()
        )));
    }
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut layer = spec.build::<f64>(&[zs.len()], &mut BuildCx::new(Init::Pytorch, &mut rng));
    let x = Tensor::from_vec(&[1, zs.len()], zs.to_vec())?;
    let y = layer.forward(x, &Pass::train(0));
    let ones = Tensor::from_vec(&[1, zs.len()], vec![1.0; zs.len()])?;
    let dy = layer
        .backward(ones, true)
        .expect("asked for the input gradient");
    Ok((spec, y.data().to_vec(), dy.data().to_vec()))
}

/// The [C, H, W] of a sample shape, or the error a layer that needs one reports.
pub fn chw(input: &[usize]) -> Result<[usize; 3], String> {
    <[usize; 3]>::try_from(input).map_err(|_| {
        format!("needs a [channels, height, width] input, got {input:?} (is it after a flatten?)")
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the layer files' tests: a one-layer network in f64 and its checks.
    use super::*;
    use rand::SeedableRng;

    /// Parses `table` (inline TOML of one layer) as layer 0 of a test source.
    pub fn spec(table: &str) -> Result<LayerSpec> {
        let v: toml::Table = format!("l = {table}").parse().expect("valid TOML");
        parse_layer(&v["l"], "test", "0".into())
    }

    /// The layer of `table` built for `input` in f64, with parameters from seed 1.
    pub fn layer(table: &str, input: &[usize]) -> (LayerSpec, Box<dyn Layer<f64>>) {
        let s = spec(table).expect("valid layer");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let l = s.build::<f64>(input, &mut BuildCx::new(Init::Pytorch, &mut rng));
        (s, l)
    }

    /// Random values in [−1, 1) from `seed`.
    pub fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Checks backward against central differences of E = Σ r ⊙ layer(x) for the input
    /// and every parameter, in the pass given (a training pass reuses its key, so random
    /// layers draw the same masks every time).
    pub fn gradcheck(table: &str, input_shape: &[usize], pass: Pass) {
        let (_, mut l) = layer(table, &input_shape[1..]);
        let n: usize = input_shape.iter().product();
        let x = Tensor::from_vec(input_shape, random(n, 2)).unwrap();
        let y = l.forward(x.clone(), &pass);
        let r = random(y.len(), 3);
        let dx = l
            .backward(Tensor::from_vec(y.shape(), r.clone()).unwrap(), true)
            .unwrap();
        let grads: Vec<(String, Tensor<f64>)> = l
            .params()
            .into_iter()
            .map(|(n, p)| (n, p.grad.clone()))
            .collect();
        let energy = |l: &mut Box<dyn Layer<f64>>, x: &Tensor<f64>| -> f64 {
            let y = l.forward(x.clone(), &pass);
            y.data().iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let h = 1e-6;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()));
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.data_mut()[i] += h;
            xm.data_mut()[i] -= h;
            let fd = (energy(&mut l, &xp) - energy(&mut l, &xm)) / (2.0 * h);
            assert!(
                close(dx.data()[i], fd),
                "{table}: dx[{i}] {} vs {fd}",
                dx.data()[i]
            );
        }
        for (name, g) in grads {
            for i in 0..g.len() {
                let nudge = |l: &mut Box<dyn Layer<f64>>, d: f64| {
                    for (n, p) in l.params_mut() {
                        if n == name {
                            p.value.data_mut()[i] += d;
                        }
                    }
                };
                nudge(&mut l, h);
                let ep = energy(&mut l, &x);
                nudge(&mut l, -2.0 * h);
                let em = energy(&mut l, &x);
                nudge(&mut l, h);
                let fd = (ep - em) / (2.0 * h);
                assert!(
                    close(g.data()[i], fd),
                    "{table}: {name}[{i}] {} vs {fd}",
                    g.data()[i]
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Layers built with one context share its buffer of each type; a context of its own (a
    /// replica's) has buffers of its own.
    #[test]
    fn shared_buffers_are_one_per_context_and_type() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut cx = BuildCx::new(Init::default(), &mut rng);
        let (a, b, c) = (
            cx.shared::<Vec<f32>>(),
            cx.shared::<Vec<f32>>(),
            cx.shared::<Vec<f64>>(),
        );
        a.lock().push(1.0);
        assert_eq!(*b.lock(), [1.0]);
        assert!(c.lock().is_empty());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut other = BuildCx::new(Init::default(), &mut rng);
        assert!(other.shared::<Vec<f32>>().lock().is_empty());
    }
}
