//! Device → host read-backs, written once. Asynchronous, the only kind the browser allows;
//! native callers block on them (`pollster`).

use burn::tensor::Tensor;

use crate::error::DeviceError;

fn device_error(e: impl std::fmt::Debug) -> DeviceError {
    DeviceError(format!("{e:?}"))
}

/// A float tensor's values, in row-major order.
pub async fn f32s<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, DeviceError> {
    let data = t.into_data_async().await.map_err(device_error)?;
    super::traffic::read_back(data.as_bytes().len());
    data.convert::<f32>().try_into_vec::<f32>().map_err(device_error)
}
