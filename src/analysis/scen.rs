//! MovingAI scenario files (`.scen`, version 1): start/goal pairs with published optimal
//! lengths, as benchmark workloads.

use std::path::Path;

use crate::error::{Context, Result, bail, ensure};

use crate::engine::cpu::TIE_RELATIVE;
use crate::world::grid::Grid;
use crate::world::grid_problem::GridProblem;

/// One scenario line.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// 1-based line in the file.
    pub line: usize,
    /// Start (x = column, y = row).
    pub start: (usize, usize),
    /// Goal (x = column, y = row).
    pub goal: (usize, usize),
    /// Published optimal length (8-connected octile, no corner cutting).
    pub optimal_length: f64,
}

/// Reads a `.scen` file and checks it against `grid`: the first line is `version 1`, then one
/// tab-separated `bucket map width height start_x start_y goal_x goal_y optimal_length` per
/// line. Errors name the file and line.
pub fn load_scenarios(path: &Path, grid: &Grid) -> Result<Vec<Scenario>> {
    let text = crate::io::output::read_input_text(path, "scenario file")?;
    parse_scenarios(&text, grid)
        .with_context(|| format!("invalid scenario file {}", path.display()))
}

/// Parses the text of a `.scen` file; see [`load_scenarios`].
pub fn parse_scenarios(text: &str, grid: &Grid) -> Result<Vec<Scenario>> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).enumerate();
    let (_, first) = lines
        .next()
        .context("line 1: empty file, expected `version 1`")?;
    let mut version = first.split_whitespace();
    ensure!(
        version.next() == Some("version")
            && version.next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0),
        "line 1: expected `version 1`, found {first:?}"
    );
    let mut scenarios = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') {
            line.split('\t').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        if fields.len() != 9 {
            bail!(
                "line {n}: expected 9 fields (bucket map width height start_x start_y goal_x \
                 goal_y optimal_length), found {}",
                fields.len()
            );
        }
        let int = |k: usize, name: &str| -> Result<usize> {
            fields[k]
                .parse::<usize>()
                .with_context(|| format!("line {n}: {name} {:?} is not a whole number", fields[k]))
        };
        let (width, height) = (int(2, "width")?, int(3, "height")?);
        if (width, height) != (grid.width, grid.height) {
            bail!(
                "line {n}: scenario map size {width}x{height} disagrees with the map's {}x{}",
                grid.width,
                grid.height
            );
        }
        let start = (int(4, "start_x")?, int(5, "start_y")?);
        let goal = (int(6, "goal_x")?, int(7, "goal_y")?);
        for (name, (x, y)) in [("start", start), ("goal", goal)] {
            ensure!(
                grid.is_free(y as i64, x as i64),
                "line {n}: {name} X={x},Y={y} is off the map or on a blocked cell"
            );
        }
        let optimal_length: f64 = fields[8]
            .parse()
            .with_context(|| format!("line {n}: optimal_length {:?} is not a number", fields[8]))?;
        ensure!(
            optimal_length.is_finite() && optimal_length >= 0.0,
            "line {n}: optimal_length {optimal_length} is not a length"
        );
        scenarios.push(Scenario {
            line: n,
            start,
            goal,
            optimal_length,
        });
    }
    ensure!(!scenarios.is_empty(), "the file lists no scenario");
    Ok(scenarios)
}

/// Length of the greedy path from `start` to `goal` (cells) under the values `[row][col]` of
/// a hard (alpha = 0) solve of `problem`: at each cell the first action maximising
/// `V(destination) - cost(action)` (ties within [`TIE_RELATIVE`], as the policy breaks them),
/// the costs summed in f64. This is the exact length of the path the solve's policy takes, free
/// of the f32 rounding that V accumulates along long paths. `None` if it does not reach the
/// goal (values climb by at least the smallest cost per step, so it cannot cycle).
pub fn greedy_path_length(
    problem: &GridProblem,
    values: &[f32],
    start: usize,
    goal: usize,
) -> Option<f64> {
    let grid = &problem.grid;
    let moves = problem.actions.moves();
    let costs = problem.move_cost.per_action(&problem.actions);
    let mask = grid.move_mask(&problem.actions);
    let (mut cell, mut length) = (start, 0.0f64);
    for _ in 0..grid.cells() {
        if cell == goal {
            return Some(length);
        }
        let score =
            |a: usize| values[grid.destination(cell, mask[cell], &moves, a)] as f64 - costs[a];
        let best = (0..moves.len())
            .map(score)
            .fold(f64::NEG_INFINITY, f64::max);
        let tie = best - TIE_RELATIVE * best.abs().max(1.0);
        let a = (0..moves.len()).find(|&a| score(a) >= tie)?;
        let next = grid.destination(cell, mask[cell], &moves, a);
        if next == cell {
            return None;
        }
        length += costs[a];
        cell = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_with_line_numbers() {
        let grid = Grid::parse_movingai("type octile\nheight 2\nwidth 3\nmap\n...\n.@.\n").unwrap();
        let ok = "version 1\n0\tm.map\t3\t2\t0\t0\t2\t1\t2.41421356\n";
        let s = parse_scenarios(ok, &grid).unwrap();
        assert_eq!(s[0].start, (0, 0));
        assert_eq!(s[0].goal, (2, 1));
        let wrong_size = "version 1\n0\tm.map\t3\t3\t0\t0\t2\t1\t2.4\n";
        assert!(
            parse_scenarios(wrong_size, &grid)
                .unwrap_err()
                .to_string()
                .contains("3x3")
        );
        let blocked = "version 1\n\n0\tm.map\t3\t2\t0\t0\t1\t1\t2.4\n";
        let err = parse_scenarios(blocked, &grid).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("goal"), "{err}");
        let short = "version 1\n0\tm.map\t3\t2\t0\t0\n";
        assert!(
            parse_scenarios(short, &grid)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        assert!(parse_scenarios("version 2\n", &grid).is_err());
    }
}
