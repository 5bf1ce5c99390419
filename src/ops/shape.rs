//! Output-size arithmetic for convolution and pooling, in one place (PyTorch's rules).

/// Output extent of a convolution: ⌊(n + pad_total − d·(k−1) − 1)/s⌋ + 1,
/// or `None` when the dilated kernel does not fit in the padded input.
pub fn conv_output_size(
    n: usize,
    pad_total: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = n + pad_total;
    if stride == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// Output extent of a pooling window (padding `pad` on both sides), PyTorch's
/// `pooling_output_shape`: with `ceil_mode` a last window that would start inside
/// the right padding is dropped.
pub fn pool_output_size(
    n: usize,
    pad: usize,
    kernel: usize,
    stride: usize,
    ceil_mode: bool,
) -> Option<usize> {
    // In ceil_mode a last window may reach up to stride − 1 past the padded input, even the
    // first one: PyTorch's ⌊(n + 2p − k + s − 1) / s⌋ + 1.
    let reach = n
        + 2 * pad
        + if ceil_mode {
            stride.saturating_sub(1)
        } else {
            0
        };
    if stride == 0 || reach < kernel {
        return None;
    }
    let mut out = (reach - kernel) / stride + 1;
    if ceil_mode && (out - 1) * stride >= n + pad {
        out -= 1;
    }
    Some(out)
}

/// PyTorch's `padding="same"` for stride 1: total d·(k−1), the odd one extra at the end.
pub fn same_padding(kernel: usize, dilation: usize) -> (usize, usize) {
    let total = dilation * (kernel - 1);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lecture_sizes() {
        // 5×5 input, 2×2 filter, stride 1: 4×4 response.
        assert_eq!(conv_output_size(5, 0, 2, 1, 1), Some(4));
        // 28×28 with a 5×5 kernel and padding 2 keeps 28; then 14 after pooling; 10 after conv.
        assert_eq!(conv_output_size(28, 4, 5, 1, 1), Some(28));
        assert_eq!(pool_output_size(28, 0, 2, 2, false), Some(14));
        assert_eq!(conv_output_size(14, 0, 5, 1, 1), Some(10));
        assert_eq!(conv_output_size(3, 0, 5, 1, 1), None);
        assert_eq!(conv_output_size(7, 2, 3, 2, 2), Some(3));
    }

    #[test]
    fn ceil_mode_drops_window_in_padding() {
        // PyTorch: MaxPool2d(2, 2, ceil_mode=True) on 5 gives 3; on 4 with padding 1 gives 3.
        assert_eq!(pool_output_size(5, 0, 2, 2, true), Some(3));
        assert_eq!(pool_output_size(5, 0, 2, 2, false), Some(2));
        assert_eq!(pool_output_size(4, 1, 2, 2, true), Some(3));
        // n=6, k=3, s=2, p=1: floor gives 3, ceil gives 4 but the 4th window starts at 6 ≥ n+p=7? no: (4-1)*2=6 < 7, kept.
        assert_eq!(pool_output_size(6, 1, 3, 2, true), Some(4));
        // n=5, k=2, s=2, p=1: ceil gives 4, last window starts at 6 ≥ n+p=6, dropped.
        assert_eq!(pool_output_size(5, 1, 2, 2, true), Some(3));
        // A window larger than the padded input, in ceil_mode only (PyTorch: one output).
        assert_eq!(pool_output_size(1, 0, 2, 2, true), Some(1));
        assert_eq!(pool_output_size(2, 0, 3, 2, true), Some(1));
        assert_eq!(pool_output_size(1, 0, 3, 3, true), Some(1));
        assert_eq!(pool_output_size(1, 0, 2, 2, false), None);
        assert_eq!(pool_output_size(1, 0, 2, 1, true), None);
    }

    #[test]
    fn same_padding_even_kernel_pads_end() {
        assert_eq!(same_padding(3, 1), (1, 1));
        assert_eq!(same_padding(4, 1), (1, 2));
        assert_eq!(same_padding(4, 2), (3, 3));
    }
}
