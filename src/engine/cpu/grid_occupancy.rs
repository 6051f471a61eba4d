//! Twin of `shaders/grid_occupancy.wgsl`: `grid_occupancy`.

// Index loops mirror the WGSL loops line by line, so a reviewer can diff them by eye.
#![allow(clippy::needless_range_loop)]

use crate::engine::layout::GridInputs;

/// One forward step of a grid batch's occupancy pulled through the reverse moves:
/// `d_out(c') = gamma * sum_{(c,a): dest(c,a) = c'} d_in(c) ((1 - eps) pi(a|c) + eps / |A|)`
/// over non-fixed sources c. `policy` is `[task][row][col][action]`, the rest
/// `[task][row][col]`.
pub fn grid_occupancy(inputs: &GridInputs, policy: &[f32], d_in: &[f64], d_out: &mut [f64]) {
    let (w, h, cells) = (inputs.width as i64, inputs.height as i64, inputs.cells());
    let n = inputs.action_count;
    let connectivity = n - n % 4;
    let (keep, share) = (1.0 - inputs.slip, inputs.slip / n as f64);
    for task in 0..inputs.tasks {
        let base = task * cells;
        for cell in 0..cells {
            let mut inflow = 0.0;
            if !inputs.fixed[base + cell] {
                let mask = inputs.move_mask[cell];
                let mut weight = 0.0;
                for a in 0..n {
                    if a >= connectivity || (mask >> a) & 1 == 0 {
                        weight += keep * policy[(base + cell) * n + a] as f64 + share;
                    }
                }
                inflow += d_in[base + cell] * weight;
            }
            let (row, col) = (cell as i64 / w, cell as i64 % w);
            for a in 0..connectivity {
                let (dr, dc) = crate::world::grid::MOVE_OFFSETS[a];
                let (r, c) = (row - dr as i64, col - dc as i64);
                if r < 0 || c < 0 || r >= h || c >= w {
                    continue;
                }
                let source = (r * w + c) as usize;
                if (inputs.move_mask[source] >> a) & 1 == 0 || inputs.fixed[base + source] {
                    continue;
                }
                inflow +=
                    d_in[base + source] * (keep * policy[(base + source) * n + a] as f64 + share);
            }
            d_out[base + cell] = inputs.gamma * inflow;
        }
    }
}
