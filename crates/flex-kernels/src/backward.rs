//! The ops under Burn's autodiff over flex: each forward records what its hand-written
//! backward needs.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;

use crate::conv;
use crate::kernels::{bn_backward_kernel, dims4, pool_backward_kernel, pool_kernel, tensor, values};
use crate::{AdamStep, CpuOps};

#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 3> for BnBackward {
    /// x, gamma, stats, eps, the op's output and the dropout's scale for kept elements.
    type State = (FlexTensor, FlexTensor, FlexTensor, f64, FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, stats, eps, out, keep) = ops.state;
        let dims = dims4(&x);
        let out = values(&out);
        let (dx, dgamma, dbeta) =
            bn_backward_kernel(&values(&x), &values(&dy), (&out, keep), &values(&gamma), &values(&stats), eps, dims);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, dims.to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, vec![dims[1]]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, vec![dims[1]]));
        }
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// Which cell of each window won, and the input's dims.
    type State = (Arc<Vec<u8>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (arg, dims) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(pool_backward_kernel(&values(&dy), &arg, dims), dims.to_vec()));
        }
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    /// x, w.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w) = ops.state;
        conv_backward(&x, &w, &values(&dy), [node_x, node_w].map(|p| p.map(|n| n.id)), grads);
    }
}

/// The convolution's gradients from its output's, `dy`, for the parents that are tracked.
fn conv_backward(
    x: &FlexTensor,
    w: &FlexTensor,
    dy: &[f32],
    [node_x, node_w]: [Option<NodeId>; 2],
    grads: &mut Gradients,
) {
    let dims = dims4(x);
    let o = dims4(w)[0];
    let w = values(w);
    if let Some(node) = node_w {
        let dw = conv::weight_grad(crate::precision::current(), &values(x), dy, dims, o);
        grads.register::<Flex>(node, tensor(dw, vec![o, dims[1], 3, 3]));
    }
    if let Some(node) = node_x {
        grads.register::<Flex>(
            node,
            tensor(conv::input_grad(crate::precision::current(), dy, &w, dims, o), dims.to_vec()),
        );
    }
}

#[derive(Debug)]
struct ConvPoolBackward;

impl Backward<Flex, 2> for ConvPoolBackward {
    /// x, w, and which cell of each pooling window won.
    type State = (FlexTensor, FlexTensor, Arc<Vec<u8>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dp = grads.consume::<Flex>(&ops.node);
        let (x, w, cells) = ops.state;
        let dims = dims4(&x);
        let o = dims4(&w)[0];
        let want = [node_x.is_some(), node_w.is_some()];
        let (dx, dw) = conv::backward_pooled(
            crate::precision::current(),
            &values(&x),
            &values(&w),
            &values(&dp),
            &cells,
            dims,
            o,
            want,
        );
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, tensor(dw, vec![o, dims[1], 3, 3]));
        }
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, dims.to_vec()));
        }
    }
}

/// Burn's autodiff tensor over flex (its type is not exported by name).
type Ad<C> = FloatTensor<Autodiff<Flex, C>>;

impl<C: CheckpointStrategy> CpuOps for Autodiff<Flex, C> {
    fn bn_stats(x: Ad<C>) -> Ad<C> {
        Ad::<C>::new(<Flex as CpuOps>::bn_stats(x.into_primitive()))
    }

    fn bn_relu_dropout(x: Ad<C>, gamma: Ad<C>, beta: Ad<C>, stats: Ad<C>, eps: f64, drop: f64) -> Ad<C> {
        let stats = stats.into_primitive();
        match BnBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, gp) = (x.primitive().clone(), gamma.primitive().clone());
                let out = <Flex as CpuOps>::bn_relu_dropout(
                    xp.clone(),
                    gp.clone(),
                    beta.into_primitive(),
                    stats.clone(),
                    eps,
                    drop,
                );
                let keep = if drop > 0.0 { (1.0 / (1.0 - drop)) as f32 } else { 1.0 };
                prep.finish((xp, gp, stats, eps, out.clone(), keep), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as CpuOps>::bn_relu_dropout(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                eps,
                drop,
            )),
        }
    }

    fn adam_step(p: Ad<C>, g: Ad<C>, m: Ad<C>, v: Ad<C>, s: AdamStep) -> (Ad<C>, Ad<C>, Ad<C>) {
        let (p, m, v) = <Flex as CpuOps>::adam_step(
            p.into_primitive(),
            g.into_primitive(),
            m.into_primitive(),
            v.into_primitive(),
            s,
        );
        (Ad::<C>::new(p), Ad::<C>::new(m), Ad::<C>::new(v))
    }

    fn sgd_step(p: Ad<C>, g: Ad<C>, buf: Ad<C>, weight_decay: f64, momentum: f64, lr: f64) -> (Ad<C>, Ad<C>) {
        let (p, buf) = <Flex as CpuOps>::sgd_step(
            p.into_primitive(),
            g.into_primitive(),
            buf.into_primitive(),
            weight_decay,
            momentum,
            lr,
        );
        (Ad::<C>::new(p), Ad::<C>::new(buf))
    }

    fn conv3x3(x: Ad<C>, w: Ad<C>) -> Ad<C> {
        match ConvBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.into_primitive(), w.into_primitive());
                let out = <Flex as CpuOps>::conv3x3(xp.clone(), wp.clone());
                prep.finish((xp, wp), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as CpuOps>::conv3x3(x.into_primitive(), w.into_primitive())),
        }
    }

    fn conv3x3_pool2(x: Ad<C>, w: Ad<C>) -> Ad<C> {
        match ConvPoolBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.into_primitive(), w.into_primitive());
                let [n, c, h, wd] = dims4(&xp);
                let o = dims4(&wp)[0];
                let (out, arg) =
                    conv::forward_pooled(crate::precision::current(), &values(&xp), &values(&wp), [n, c, h, wd], o);
                prep.finish((xp, wp, Arc::new(arg)), tensor(out, vec![n, o, h / 2, wd / 2]))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<Flex as CpuOps>::conv3x3_pool2(x.into_primitive(), w.into_primitive()))
            }
        }
    }

    fn conv3x3_stats(x: Ad<C>, w: Ad<C>) -> (Ad<C>, Ad<C>) {
        match ConvBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.into_primitive(), w.into_primitive());
                let (out, stats) = <Flex as CpuOps>::conv3x3_stats(xp.clone(), wp.clone());
                (prep.finish((xp, wp), out), Ad::<C>::new(stats))
            }
            OpsKind::UnTracked(prep) => {
                let (out, stats) = <Flex as CpuOps>::conv3x3_stats(x.into_primitive(), w.into_primitive());
                (prep.finish(out), Ad::<C>::new(stats))
            }
        }
    }

    fn conv3x3_pool2_stats(x: Ad<C>, w: Ad<C>) -> (Ad<C>, Ad<C>) {
        match ConvPoolBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.into_primitive(), w.into_primitive());
                let [n, c, h, wd] = dims4(&xp);
                let o = dims4(&wp)[0];
                let (out, arg, stats) = conv::forward_pooled_stats(
                    crate::precision::current(),
                    &values(&xp),
                    &values(&wp),
                    [n, c, h, wd],
                    o,
                );
                let out = tensor(out, vec![n, o, h / 2, wd / 2]);
                (prep.finish((xp, wp, Arc::new(arg)), out), Ad::<C>::new(tensor(stats, vec![2, o])))
            }
            OpsKind::UnTracked(prep) => {
                let (out, stats) = <Flex as CpuOps>::conv3x3_pool2_stats(x.into_primitive(), w.into_primitive());
                (prep.finish(out), Ad::<C>::new(stats))
            }
        }
    }

    fn max_pool2(x: Ad<C>) -> Ad<C> {
        match PoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xp = x.into_primitive();
                let [n, c, h, w] = dims4(&xp);
                let (out, arg) = pool_kernel(&values(&xp), [n, c, h, w]);
                prep.finish((Arc::new(arg), [n, c, h, w]), tensor(out, vec![n, c, h / 2, w / 2]))
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as CpuOps>::max_pool2(x.into_primitive())),
        }
    }
}
