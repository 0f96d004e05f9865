//! Parameter-free rearrangements between space and channels, each local to
//! one cell of `factor` x `factor` pixels: the 2x2 patchify of Wan 2.2's
//! image and its inverse, and the shortcuts of the residual down and up
//! blocks of Wan 2.2 and Qwen-Image 2.1 (`AvgDown3D`, `DupUp3D`) on one
//! frame.
//!
//! Each is three stages over `[B, C, H, W]`:
//!
//! 1. space to depth by `down` (1 or 2): `[C, H, W] -> [C d², H/d, W/d]`,
//!    channel `c d² + sh d + sw` holding pixel `(h d + sh, w d + sw)`;
//! 2. a gather: each channel of the result is the mean of `g` channels of
//!    that (a zero where a source is `None`), summed in order and divided by
//!    `g` (no division when `g` is 1);
//! 3. depth to space by `up` (1 or 2), the inverse of stage 1.
//!
//! An output pixel depends on one input cell only, so a band of output rows
//! is computed from its own input rows with no halo, by the same operations
//! as the whole pass: the banded executor runs [`Shuffle::forward`] on bands.

use burn::tensor::{Int, Tensor, TensorData};

/// One rearrangement (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shuffle {
    /// diffusers' `patchify` (Wan 2.2's image): `[C, H, W] -> [C p², H/p, W/p]`,
    /// channel `c p² + a p + b` holding pixel `(h p + b, w p + a)` (the
    /// column offset before the row offset).
    Patchify { channels: usize, patch: usize },
    /// diffusers' `unpatchify`, its inverse: `[C p², h, w] -> [C, h p, w p]`.
    Unpatchify { channels: usize, patch: usize },
    /// `AvgDown3D(c_in, c_out, factor_t, factor_s)` on one frame: time is
    /// padded in front to `factor_t` frames with zeros, then each
    /// `factor_t` x `factor_s` x `factor_s` cell goes to channels
    /// (`c F + t fs² + sh fs + sw`, `F = factor_t fs²`) and each run of
    /// `g = c_in F / c_out` channels is averaged. The zero frames take part
    /// in the mean.
    AvgDown { c_in: usize, c_out: usize, factor_t: usize, factor_s: usize },
    /// `DupUp3D(c_in, c_out, factor_t, factor_s)` on the first frame: each
    /// channel repeated `r = c_out F / c_in` times, depth to space over
    /// `factor_t` x `factor_s` x `factor_s`, and the first `factor_t - 1`
    /// frames dropped (`first_chunk`): output channel `o` at `(sh, sw)` of
    /// its cell is input channel `(o F + (factor_t - 1) fs² + sh fs + sw) / r`.
    DupUp { c_in: usize, c_out: usize, factor_t: usize, factor_s: usize },
}

impl Shuffle {
    /// Input channels.
    pub fn c_in(&self) -> usize {
        match *self {
            Shuffle::Patchify { channels, .. } => channels,
            Shuffle::Unpatchify { channels, patch } => channels * patch * patch,
            Shuffle::AvgDown { c_in, .. } | Shuffle::DupUp { c_in, .. } => c_in,
        }
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        match *self {
            Shuffle::Patchify { channels, patch } => channels * patch * patch,
            Shuffle::Unpatchify { channels, .. } => channels,
            Shuffle::AvgDown { c_out, .. } | Shuffle::DupUp { c_out, .. } => c_out,
        }
    }

    /// The space-to-depth factor of stage 1.
    pub fn down(&self) -> usize {
        match *self {
            Shuffle::Patchify { patch, .. } => patch,
            Shuffle::AvgDown { factor_s, .. } => factor_s,
            Shuffle::Unpatchify { .. } | Shuffle::DupUp { .. } => 1,
        }
    }

    /// The depth-to-space factor of stage 3.
    pub fn up(&self) -> usize {
        match *self {
            Shuffle::Unpatchify { patch, .. } => patch,
            Shuffle::DupUp { factor_s, .. } => factor_s,
            Shuffle::Patchify { .. } | Shuffle::AvgDown { .. } => 1,
        }
    }

    /// Whether it returns its input unchanged (an `AvgDown3D` of factors 1
    /// between equal widths, as the last level of an encoder has).
    pub fn is_identity(&self) -> bool {
        self.down() == 1 && self.up() == 1 && self.c_in() == self.c_out() && self.group() == 1 && {
            let sources = self.sources();
            sources.iter().enumerate().all(|(k, s)| s[0] == Some(k))
        }
    }

    /// The output's `(H, W)` for an input of `(h, w)` (multiples of [`Shuffle::down`]).
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.down() * self.up(), w / self.down() * self.up())
    }

    /// Input rows `[i0, i1)` from which output rows `[o0, o1)` are computed,
    /// and the output row that the first row computed from them is.
    pub fn input_rows(&self, o0: usize, o1: usize, h_in: usize) -> (usize, usize, usize) {
        let (d, u) = (self.down(), self.up());
        if u > 1 {
            let i0 = o0 / u;
            (i0, o1.div_ceil(u).min(h_in), i0 * u)
        } else {
            (d * o0, (d * o1).min(h_in), o0)
        }
    }

    /// Rejects factors and widths the shuffle cannot be built with (they
    /// come from a file's shapes).
    pub fn check(&self) -> Result<(), String> {
        let factors_ok = |t: usize, s: usize| (1..=2).contains(&t) && (1..=2).contains(&s);
        match *self {
            Shuffle::Patchify { channels, patch } | Shuffle::Unpatchify { channels, patch } => {
                if channels == 0 || !(1..=4).contains(&patch) {
                    return Err(format!("a patch of {patch} over {channels} channels"));
                }
            }
            Shuffle::AvgDown { c_in, c_out, factor_t, factor_s } => {
                let f = factor_t * factor_s * factor_s;
                if !factors_ok(factor_t, factor_s) || c_out == 0 || !(c_in * f).is_multiple_of(c_out) || c_in == 0 {
                    return Err(format!(
                        "a residual down block from {c_in} to {c_out} channels (factors {factor_t}, {factor_s}) \
                         cannot average its input"
                    ));
                }
            }
            Shuffle::DupUp { c_in, c_out, factor_t, factor_s } => {
                let f = factor_t * factor_s * factor_s;
                if !factors_ok(factor_t, factor_s) || c_in == 0 || !(c_out * f).is_multiple_of(c_in) || c_out == 0 {
                    return Err(format!(
                        "a residual up block from {c_in} to {c_out} channels (factors {factor_t}, {factor_s}) \
                         cannot repeat its input"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sources averaged into each channel of stage 2 (all of one length).
    fn group(&self) -> usize {
        match *self {
            Shuffle::AvgDown { c_in, c_out, factor_t, factor_s } => c_in * factor_t * factor_s * factor_s / c_out,
            _ => 1,
        }
    }

    /// For each channel after stage 2, the channels after stage 1 it
    /// averages (`None`: a zero).
    fn sources(&self) -> Vec<Vec<Option<usize>>> {
        match *self {
            Shuffle::Patchify { channels, patch: p } | Shuffle::Unpatchify { channels, patch: p } => {
                // Both swap the two offsets within a channel's p² block:
                // space-to-depth orders them (row, column), diffusers'
                // patches (column, row).
                (0..channels * p * p)
                    .map(|k| {
                        let (c, r) = (k / (p * p), k % (p * p));
                        vec![Some(c * p * p + (r % p) * p + r / p)]
                    })
                    .collect()
            }
            Shuffle::AvgDown { c_out, factor_t, factor_s, .. } => {
                let (s2, f, g) = (factor_s * factor_s, factor_t * factor_s * factor_s, self.group());
                (0..c_out)
                    .map(|o| {
                        (0..g)
                            .map(|j| {
                                let k = o * g + j;
                                let (c, t, s) = (k / f, (k % f) / s2, k % s2);
                                // The frame is the last of its cell: zeros pad in front.
                                (t == factor_t - 1).then_some(c * s2 + s)
                            })
                            .collect()
                    })
                    .collect()
            }
            Shuffle::DupUp { c_in, c_out, factor_t, factor_s } => {
                let (s2, f) = (factor_s * factor_s, factor_t * factor_s * factor_s);
                let repeats = c_out * f / c_in;
                (0..c_out * s2)
                    .map(|k| {
                        let (o, s) = (k / s2, k % s2);
                        vec![Some((o * f + (factor_t - 1) * s2 + s) / repeats)]
                    })
                    .collect()
            }
        }
    }

    /// `[B, c_in, H, W] -> [B, c_out, H', W']` (see [`Shuffle::output_size`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.is_identity() {
            return x;
        }
        let (device, dtype) = (x.device(), x.dtype());
        let d = self.down();
        let x = if d > 1 {
            let [b, c, h, w] = x.dims();
            x.reshape([b, c, h / d, d, w / d, d]).permute([0, 1, 3, 5, 2, 4]).reshape([b, c * d * d, h / d, w / d])
        } else {
            x
        };
        let [b, c, h, w] = x.dims();
        let sources = self.sources();
        // A zero channel after the others, for the sources that are zeros.
        let x = match sources.iter().flatten().any(Option::is_none) {
            true => Tensor::cat(vec![x, Tensor::zeros([b, 1, h, w], (&device, dtype))], 1),
            false => x,
        };
        let g = self.group();
        let mut sum: Option<Tensor<4>> = None;
        for j in 0..g {
            let index: Vec<i32> = sources.iter().map(|s| s[j].unwrap_or(c) as i32).collect();
            let n = index.len();
            let part = x.clone().select(1, Tensor::<1, Int>::from_ints(TensorData::new(index, [n]), &device));
            sum = Some(match sum {
                Some(sum) => sum + part,
                None => part,
            });
        }
        let y = sum.expect("a shuffle has at least one source per channel");
        let y = if g > 1 { y.div_scalar(g as f32) } else { y };
        let u = self.up();
        if u > 1 {
            let [b, c, h, w] = y.dims();
            y.reshape([b, c / (u * u), u, u, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([b, c / (u * u), h * u, w * u])
        } else {
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn run(shuffle: Shuffle, x: Vec<f32>, [c, h, w]: [usize; 3]) -> (Vec<usize>, Vec<f32>) {
        let t = Tensor::<4>::from_data(TensorData::new(x, [1, c, h, w]), &Device::flex());
        let y = shuffle.forward(t);
        (y.dims().to_vec(), y.into_data().try_into_vec::<f32>().unwrap())
    }

    #[test]
    fn patchify_puts_the_column_offset_first_and_unpatchify_inverts_it() {
        // One channel, 2x2: pixels (row, col) = 0:(0,0) 1:(0,1) 2:(1,0) 3:(1,1).
        let patch = Shuffle::Patchify { channels: 1, patch: 2 };
        let (shape, y) = run(patch, vec![0.0, 1.0, 2.0, 3.0], [1, 2, 2]);
        assert_eq!(shape, [1, 4, 1, 1]);
        // Channel a*2 + b holds (row b, column a).
        assert_eq!(y, [0.0, 2.0, 1.0, 3.0]);
        let x: Vec<f32> = (0..3 * 4 * 6).map(|v| v as f32).collect();
        let (_, p) = run(Shuffle::Patchify { channels: 3, patch: 2 }, x.clone(), [3, 4, 6]);
        let (shape, back) = run(Shuffle::Unpatchify { channels: 3, patch: 2 }, p, [12, 2, 3]);
        assert_eq!((shape, back), (vec![1, 3, 4, 6], x));
    }

    #[test]
    fn avg_down_averages_with_the_zero_frame() {
        // 2 channels -> 4, time and space halved: F = 8, g = 4, so each
        // output channel is one (channel, frame) pair: the padding frame's
        // are zeros, the frame's the mean of its 2x2 cell over 4.
        let down = Shuffle::AvgDown { c_in: 2, c_out: 4, factor_t: 2, factor_s: 2 };
        let x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        let (shape, y) = run(down, x.clone(), [2, 2, 2]);
        assert_eq!(shape, [1, 4, 1, 1]);
        assert_eq!(y, [0.0, 2.5, 0.0, 25.0]);
        // Equal widths: all of a channel's cell and its zero frame, over 8.
        let down = Shuffle::AvgDown { c_in: 2, c_out: 2, factor_t: 2, factor_s: 2 };
        assert_eq!(run(down, x.clone(), [2, 2, 2]).1, [1.25, 12.5]);
        // Space only, 2 -> 4 channels: g = 2, pairs of a cell's pixels.
        let down = Shuffle::AvgDown { c_in: 2, c_out: 4, factor_t: 1, factor_s: 2 };
        assert_eq!(run(down, x, [2, 2, 2]).1, [1.5, 3.5, 15.0, 35.0]);
        assert!(Shuffle::AvgDown { c_in: 3, c_out: 3, factor_t: 1, factor_s: 1 }.is_identity());
    }

    #[test]
    fn dup_up_keeps_the_last_frame_of_each_cell() {
        // 1 channel -> 2, time and space doubled: F = 8, each input channel
        // repeated 16 times; the kept frame is the second.
        let up = Shuffle::DupUp { c_in: 1, c_out: 2, factor_t: 2, factor_s: 2 };
        let (shape, y) = run(up, vec![7.0], [1, 1, 1]);
        assert_eq!((shape, y), (vec![1, 2, 2, 2], vec![7.0; 8]));
        // 4 channels -> 2, time and space: r = 4, output o at offset s is
        // input (8 o + 4 + s) / 4 = 2 o + 1.
        let up = Shuffle::DupUp { c_in: 4, c_out: 2, factor_t: 2, factor_s: 2 };
        let (_, y) = run(up, vec![0.0, 1.0, 2.0, 3.0], [4, 1, 1]);
        assert_eq!(y, [1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]);
        // Space only, 4 -> 2: r = 2, output o at offset s is (4 o + s) / 2.
        let up = Shuffle::DupUp { c_in: 4, c_out: 2, factor_t: 1, factor_s: 2 };
        let (_, y) = run(up, vec![0.0, 1.0, 2.0, 3.0], [4, 1, 1]);
        assert_eq!(y, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }
}
