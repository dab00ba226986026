//! The ops on flex itself (no autodiff): the kernels on host slices.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;

use crate::conv;
use crate::kernels::{adam_kernel, apply_kernel, dims4, pool_kernel, sgd_kernel, stats_kernel, tensor, values};
use crate::mask::Mask;
use crate::{AdamStep, CpuOps};

impl CpuOps for Flex {
    fn bn_stats(x: FlexTensor) -> FlexTensor {
        let dims = dims4(&x);
        tensor(stats_kernel(&values(&x), dims), vec![2, dims[1]])
    }

    fn bn_relu_dropout(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        eps: f64,
        drop: f64,
    ) -> FlexTensor {
        let dims = dims4(&x);
        let mask = (drop > 0.0).then(|| Mask::draw(drop));
        let out = apply_kernel(&values(&x), &values(&gamma), &values(&beta), &values(&stats), eps, mask, dims);
        tensor(out, dims.to_vec())
    }

    fn adam_step(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        s: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = p.layout().shape().to_vec();
        let AdamStep { weight_decay, beta1, beta2, root_bc2, eps, step_size } = s;
        let s = [weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2, root_bc2, eps, step_size].map(|v| v as f32);
        let (p, m, v) = adam_kernel(&values(&p), &values(&g), &values(&m), &values(&v), s);
        (tensor(p, shape.clone()), tensor(m, shape.clone()), tensor(v, shape))
    }

    fn sgd_step(
        p: FlexTensor,
        g: FlexTensor,
        buf: FlexTensor,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
    ) -> (FlexTensor, FlexTensor) {
        let shape = p.layout().shape().to_vec();
        let (p, buf) =
            sgd_kernel(&values(&p), &values(&g), &values(&buf), [weight_decay, momentum, lr].map(|v| v as f32));
        (tensor(p, shape.clone()), tensor(buf, shape))
    }

    fn max_pool2(x: FlexTensor) -> FlexTensor {
        let [n, c, h, w] = dims4(&x);
        tensor(pool_kernel(&values(&x), [n, c, h, w]).0, vec![n, c, h / 2, w / 2])
    }

    fn conv3x3(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let dims = dims4(&x);
        let o = dims4(&w)[0];
        tensor(
            conv::forward(crate::precision::current(), &values(&x), &values(&w), dims, o),
            vec![dims[0], o, dims[2], dims[3]],
        )
    }

    fn conv3x3_stats(x: FlexTensor, w: FlexTensor) -> (FlexTensor, FlexTensor) {
        let dims = dims4(&x);
        let o = dims4(&w)[0];
        let (out, stats) = conv::forward_stats(crate::precision::current(), &values(&x), &values(&w), dims, o);
        (tensor(out, vec![dims[0], o, dims[2], dims[3]]), tensor(stats, vec![2, o]))
    }

    fn conv3x3_pool2_stats(x: FlexTensor, w: FlexTensor) -> (FlexTensor, FlexTensor) {
        let [n, c, h, wd] = dims4(&x);
        let o = dims4(&w)[0];
        let (out, _, stats) =
            conv::forward_pooled_stats(crate::precision::current(), &values(&x), &values(&w), [n, c, h, wd], o);
        (tensor(out, vec![n, o, h / 2, wd / 2]), tensor(stats, vec![2, o]))
    }

    fn conv3x3_pool2(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let [n, c, h, wd] = dims4(&x);
        let o = dims4(&w)[0];
        let (out, _) = conv::forward_pooled(crate::precision::current(), &values(&x), &values(&w), [n, c, h, wd], o);
        tensor(out, vec![n, o, h / 2, wd / 2])
    }
}
