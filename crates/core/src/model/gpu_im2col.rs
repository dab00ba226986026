//! The im2col matrix of a 3×3, padding-1 convolution as one CubeCL kernel.
//!
//! Built from tensor ops (pad, nine shifted slices, a concatenation: [`super::gpu_conv`]'s
//! reference) the matrix took 15.6 of layer1's 20.3 ms on an H200 (width 1, batch 512,
//! `examples/gpu_probe.rs`), the GEMM itself 4.7: the padded copy, then a copy per tap, each
//! launched per chunk. Here each output element is written once, straight from the input in
//! whatever layout it has (channels-last after our BatchNorm op, NCHW for the first layer),
//! zeros where a tap falls outside the image, in the type asked for (f16 for `gemm-f16`).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::std::FastDivmod;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, ir::ElemType};
use burn_cubecl::kernel::untile;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

/// One thread per element of `cols [m·h·w, 9·c]`: row `(i·h + y)·w + x`, column `k·c + ch` is
/// `input[start + i, ch, y + k/3 − 1, x + k%3 − 1]` cast to `G`, zero outside the image.
#[cube(launch, address_type = "dynamic")]
fn im2col3x3_kernel<F: Float, G: Float>(
    input: &Tensor<F>,
    cols: &mut Tensor<G>,
    row_len: FastDivmod<usize>,
    chans: FastDivmod<usize>,
    width: FastDivmod<usize>,
    height: FastDivmod<usize>,
    start: usize,
    #[define(F, G)] _dtypes: [ElemType; 2],
) {
    if ABSOLUTE_POS >= cols.len() {
        terminate!();
    }
    let (row, col) = row_len.div_mod(ABSOLUTE_POS);
    let (tap, ch) = chans.div_mod(col);
    let (rest, px) = width.div_mod(row);
    let (image, py) = height.div_mod(rest);
    // In padded coordinates, so that nothing goes below zero: the pixel is (y − 1, x − 1).
    let y = py + tap / 3;
    let x = px + tap % 3;
    let mut value = G::new(0.0);
    if y >= 1 && y <= input.shape(2) && x >= 1 && x <= input.shape(3) {
        value = G::cast_from(
            input[(start + image) * input.stride(0)
                + ch * input.stride(1)
                + (y - 1) * input.stride(2)
                + (x - 1) * input.stride(3)],
        );
    }
    cols[ABSOLUTE_POS] = value;
}

/// The im2col matrix `[m·h·w, 9·c]` of images `start..start + m` of `x [n, c, h, w]`, in
/// `dtype`.
pub fn im2col3x3(x: CubeTensor, start: usize, m: usize, dtype: DType) -> CubeTensor {
    let x = untile(x);
    let [n, c, h, w] = x.meta.shape().dims::<4>();
    assert!(start + m <= n, "im2col3x3: images {start}..{} of {n}", start + m);
    let in_dtype = x.dtype;
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), Shape::new([m * h * w, 9 * c]), dtype);
    let count = m * h * w * 9 * c;
    let cube_dim = CubeDim::new(&x.client, count);
    let cube_count = calculate_cube_count_elemwise(&x.client, count, cube_dim);
    let address = x.required_address_type().max(out.required_address_type());
    im2col3x3_kernel::launch(
        &out.client,
        cube_count,
        cube_dim,
        address,
        x.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        9 * c,
        c,
        w,
        h,
        start,
        [dtype_to_storage_type(in_dtype), dtype_to_storage_type(dtype)],
    );
    out
}
