//! Training-mode BatchNorm → ReLU → dropout on CubeCL GPUs as one op with a hand-written
//! backward, built from tensor ops that Burn's fusion merges.
//!
//! Differentiated op by op, every forward op records a backward node, each of which launches
//! its own element-wise kernels and reductions, and gradients are added where a value is used
//! twice: with this op a training step launched 495 kernels instead of 652 on lavapipe
//! (`bench --kernels`, README "wgpu: keeping the GPU busy"), and 335 with the shapes below.
//! The backward is the closed form: with `g` the output gradient gated by the ReLU and the
//! dropout mask (both read off the output: it is positive exactly where neither zeroed it),
//! `x̂` the normalised input and `N = n·h·w`,
//!
//! ```text
//! dβ = Σ g      dγ = Σ g·x̂      dx = γ/σ · (g − dβ/N − x̂·dγ/N)
//! ```
//!
//! The statistics come in as inputs computed from the detached `x` (`ops.rs`), and the
//! formula carries the gradient through them. As `batchnorm.rs` explains, every per-channel
//! sum is two reductions (over each image's plane, then over the batch). Parameters,
//! statistics and their gradients are `[1, c, 1, 1]` columns throughout: Burn's fusion ends a
//! kernel at every reshape, so the per-channel arithmetic is done in the shape it is
//! broadcast in.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Distribution, Shape, Tensor};

#[backend_extension(Autodiff, Cube, Fusion)]
pub trait GpuBatchNorm: Backend {
    /// `dropout(relu((x - mean) / sqrt(var + eps) · gamma + beta))` for `x [n, c, h, w]` and
    /// `[1, c, 1, 1]` parameters and statistics; `drop` 0: no dropout. Differentiated as
    /// training-mode BatchNorm: `mean` and `var` are taken to be `x`'s own batch statistics.
    #[fusion(default)]
    fn bn_relu_dropout_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        drop: f64,
    ) -> FloatTensor<Self> {
        // The mask first: the random draw is a kernel of its own, and drawn between the
        // element-wise ops it would split them into two kernels. It is drawn channels-last, the
        // layout GPU convolutions leave `x` in: the fused kernel writes its output in its
        // inputs' layout, and the next convolution's weight gradient slices that output per
        // tap, which costs a copy kernel per tap when it is not channels-last.
        let keep = 1.0 - drop;
        let mask = (drop > 0.0).then(|| {
            let [n, c, h, w] = x.shape().dims::<4>();
            let nhwc = Self::float_random(
                Shape::new([n, h, w, c]),
                Distribution::Bernoulli(keep),
                &x.device(),
                x.dtype().into(),
            );
            Self::float_permute(nhwc, &[0, 3, 1, 2])
        });
        let mut scale = Self::float_mul(gamma, inv_std::<Self>(var, eps));
        let mut shift = Self::float_sub(beta, Self::float_mul(mean, scale.clone()));
        let Some(mask) = mask else {
            return Self::relu(Self::float_add(Self::float_mul(x, scale), shift));
        };
        // Inverted dropout scales what it keeps by 1/keep; relu(z)/keep = relu(z/keep), so the
        // scale goes into the per-channel factors instead of being an op on every element.
        scale = Self::float_mul_scalar(scale, (1.0 / keep).into());
        shift = Self::float_mul_scalar(shift, (1.0 / keep).into());
        Self::float_mul(Self::relu(Self::float_add(Self::float_mul(x, scale), shift)), mask)
    }
}

impl GpuBatchNorm for burn_cubecl::CubeBackend {}

fn inv_std<B: Backend>(var: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())))
}

/// Per-channel sums of `[n, c, h, w]` as a `[1, c, 1, 1]` column: over each image's pixels, then
/// over the batch, channels-last as [`super::batchnorm::batch_stats`] takes them.
fn channel_sums<B: Backend>(t: FloatTensor<B>, [n, c, h, w]: [usize; 4]) -> FloatTensor<B> {
    let planes = B::float_sum_dim(B::float_reshape(B::float_permute(t, &[0, 2, 3, 1]), Shape::new([n, h * w, c])), 1);
    B::float_reshape(B::float_sum_dim(planes, 0), Shape::new([1, c, 1, 1]))
}

#[derive(Debug)]
struct BnBackward;

impl<B: Backend> Backward<B, 3> for BnBackward {
    /// x, gamma, mean, var, eps, the op's output, and the dropout's scale of kept elements.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dout = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, var, eps, out, keep_scale) = ops.state;
        let dims = x.shape().dims::<4>();
        let [n, _, h, w] = dims;
        let count = (n * h * w) as f64;
        // Zero where the ReLU or the dropout zeroed the output; kept elements were scaled.
        let mut g = B::relu_backward(out, dout);
        if keep_scale != 1.0 {
            g = B::float_mul_scalar(g, keep_scale.into());
        }
        let inv = inv_std::<B>(var, eps);
        let xhat = B::float_mul(B::float_sub(x, mean), inv.clone());
        let dbeta = channel_sums::<B>(g.clone(), dims);
        let dgamma = channel_sums::<B>(B::float_mul(g.clone(), xhat.clone()), dims);
        if let Some(node) = node_x {
            // g − (dβ + x̂·dγ)/N: every op on the whole activation, so that one kernel does
            // them (the column-sized divisions by N each stayed a kernel of their own).
            let mean_terms = B::float_mul_scalar(
                B::float_add(B::float_mul(xhat, dgamma.clone()), dbeta.clone()),
                (1.0 / count).into(),
            );
            let dx = B::float_mul(B::float_sub(g, mean_terms), B::float_mul(gamma, inv));
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, dbeta);
        }
    }
}

type Ad<B, C> = FloatTensor<Autodiff<B, C>>;

impl<B: GpuBatchNorm, C: CheckpointStrategy> GpuBatchNorm for Autodiff<B, C> {
    fn bn_relu_dropout_train(
        x: Ad<B, C>,
        gamma: Ad<B, C>,
        beta: Ad<B, C>,
        mean: Ad<B, C>,
        var: Ad<B, C>,
        eps: f64,
        drop: f64,
    ) -> Ad<B, C> {
        let (mean, var) = (mean.into_primitive(), var.into_primitive());
        match BnBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, gp) = (x.into_primitive(), gamma.into_primitive());
                let out = B::bn_relu_dropout_train(
                    xp.clone(),
                    gp.clone(),
                    beta.into_primitive(),
                    mean.clone(),
                    var.clone(),
                    eps,
                    drop,
                );
                let keep_scale = if drop > 0.0 { 1.0 / (1.0 - drop) } else { 1.0 };
                prep.finish((xp, gp, mean, var, eps, out.clone(), keep_scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bn_relu_dropout_train(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                mean,
                var,
                eps,
                drop,
            )),
        }
    }
}

/// [`GpuBatchNorm::bn_relu_dropout_train`] on tensors of a CubeCL device (wgpu, CUDA): `x [n, c, h, w]`,
/// the rest `[1, c, 1, 1]`.
pub fn bn_relu_dropout_train(
    x: Tensor<4>,
    gamma: Tensor<4>,
    beta: Tensor<4>,
    mean: Tensor<4>,
    var: Tensor<4>,
    eps: f64,
    drop: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as GpuBatchNorm>::bn_relu_dropout_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        mean.into_dispatch(),
        var.into_dispatch(),
        eps,
        drop,
    ))
}
