//! Gridworld maps: MovingAI `.map` parsing, the built-in maze generator, the action set and the
//! per-cell legal-move bitmask that both the WGSL kernels and the CPU reference read.

use std::path::Path;

use crate::error::{Context, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Largest side accepted for a grid (cells): keeps `row * width + col` and task offsets in u32.
pub const MAX_SIDE: usize = 32_768;

/// An H x W map of free and blocked cells, row-major: cell `s = row * width + col`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Number of rows (H).
    pub height: usize,
    /// Number of columns (W).
    pub width: usize,
    /// `true` where the cell is passable. Layout `[row][col]`.
    pub free: Vec<bool>,
}

/// 4- or 8-connected moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connectivity {
    /// N, E, S, W.
    Four,
    /// N, E, S, W, NE, SE, SW, NW.
    Eight,
}

/// The ordered action list of a gridworld: `N, E, S, W`, then `NE, SE, SW, NW` with
/// 8-connectivity, then `STAY` when enabled. The index into this list is the action id
/// everywhere (kernels, reference, `policy.npy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionSet {
    /// Which moves exist.
    pub connectivity: Connectivity,
    /// Whether a final `STAY` action exists.
    pub stay: bool,
}

/// Row and column offsets of the nine moves, in action order (`STAY` last).
pub const MOVE_OFFSETS: [(i32, i32); 9] = [
    (-1, 0),  // N
    (0, 1),   // E
    (1, 0),   // S
    (0, -1),  // W
    (-1, 1),  // NE
    (1, 1),   // SE
    (1, -1),  // SW
    (-1, -1), // NW
    (0, 0),   // STAY
];

/// Action names in action order, for summaries and docs.
pub const MOVE_NAMES: [&str; 9] = ["N", "E", "S", "W", "NE", "SE", "SW", "NW", "STAY"];

impl ActionSet {
    /// Number of actions |A| (4, 5, 8 or 9).
    pub fn count(&self) -> usize {
        self.moves().len()
    }

    /// Index into [`MOVE_OFFSETS`] of each action, in action order.
    pub fn moves(&self) -> Vec<usize> {
        let mut moves: Vec<usize> = match self.connectivity {
            Connectivity::Four => (0..4).collect(),
            Connectivity::Eight => (0..8).collect(),
        };
        if self.stay {
            moves.push(8);
        }
        moves
    }

    /// Names of the actions, in action order.
    pub fn names(&self) -> Vec<&'static str> {
        self.moves().into_iter().map(|m| MOVE_NAMES[m]).collect()
    }

    /// Default step cost of each action: 1 orthogonal, sqrt(2) diagonal, 0 for `STAY`.
    pub fn default_costs(&self) -> Vec<f64> {
        MoveCost::default().per_action(self)
    }
}

/// Step costs by move kind; `r(s,a) = R_task(s) - cost(a)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoveCost {
    /// Cost of N/E/S/W.
    pub orthogonal: f64,
    /// Cost of NE/SE/SW/NW.
    pub diagonal: f64,
    /// Cost of STAY.
    pub stay: f64,
}

impl Default for MoveCost {
    fn default() -> Self {
        Self {
            orthogonal: 1.0,
            diagonal: std::f64::consts::SQRT_2,
            stay: 0.0,
        }
    }
}

impl MoveCost {
    /// Cost of each action of `actions`, in action order.
    pub fn per_action(&self, actions: &ActionSet) -> Vec<f64> {
        actions
            .moves()
            .into_iter()
            .map(|m| match m {
                0..=3 => self.orthogonal,
                4..=7 => self.diagonal,
                _ => self.stay,
            })
            .collect()
    }
}

/// A character of a MovingAI map that is no MovingAI terrain (`.`, `G`, `S`, `@`, `O`, `T`,
/// `W`); the parser reads it as a wall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownTerrain {
    /// The character.
    pub character: char,
    /// Cells holding it.
    pub cells: usize,
    /// The 1-based line of its first cell.
    pub first_line: usize,
}

impl Grid {
    /// A grid with every cell free.
    pub fn open(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            free: vec![true; height * width],
        }
    }

    /// Number of cells H * W.
    pub fn cells(&self) -> usize {
        self.height * self.width
    }

    /// Number of free cells.
    pub fn free_cells(&self) -> usize {
        self.free.iter().filter(|&&f| f).count()
    }

    /// Whether (row, col) is on the map and free.
    pub fn is_free(&self, row: i64, col: i64) -> bool {
        row >= 0
            && col >= 0
            && (row as usize) < self.height
            && (col as usize) < self.width
            && self.free[row as usize * self.width + col as usize]
    }

    /// Whether the move with offset index `m` from free cell (row, col) lands on another
    /// free cell. Diagonals need the target and both orthogonal neighbours free (no corner
    /// cutting, MovingAI's octile rule). `STAY` never "moves".
    pub fn move_is_legal(&self, row: usize, col: usize, m: usize) -> bool {
        let (dr, dc) = MOVE_OFFSETS[m];
        if (dr, dc) == (0, 0) {
            return false;
        }
        let (r, c) = (row as i64, col as i64);
        let target = self.is_free(r + dr as i64, c + dc as i64);
        if dr != 0 && dc != 0 {
            target && self.is_free(r + dr as i64, c) && self.is_free(r, c + dc as i64)
        } else {
            target
        }
    }

    /// Per-cell legal-move bitmask, layout `[row][col]`: bit `a` is set when action `a` of
    /// `actions` moves a free cell to a different free cell; a clear bit means the action
    /// leaves the agent in place. Blocked cells get 0. The GPU kernels and the CPU reference
    /// both derive every transition from this mask.
    pub fn move_mask(&self, actions: &ActionSet) -> Vec<u32> {
        let moves = actions.moves();
        let mut mask = vec![0u32; self.cells()];
        for row in 0..self.height {
            for col in 0..self.width {
                let cell = row * self.width + col;
                if !self.free[cell] {
                    continue;
                }
                for (a, &m) in moves.iter().enumerate() {
                    if self.move_is_legal(row, col, m) {
                        mask[cell] |= 1 << a;
                    }
                }
            }
        }
        mask
    }

    /// Cell reached by action index `a` from `cell`, given that cell's move mask.
    pub fn destination(&self, cell: usize, mask: u32, actions: &[usize], a: usize) -> usize {
        if mask & (1 << a) == 0 {
            return cell;
        }
        let (dr, dc) = MOVE_OFFSETS[actions[a]];
        (cell as i64 + dr as i64 * self.width as i64 + dc as i64) as usize
    }

    /// Parses a MovingAI `.map` file (`type octile`, `height H`, `width W`, `map`, then H
    /// rows of W characters; `.`, `G`, `S` passable, `@`, `O`, `T`, `W` blocked, any other
    /// character blocked too). CRLF line endings are accepted.
    pub fn load_movingai(path: &Path) -> Result<Self> {
        Ok(Self::load_movingai_noting(path)?.0)
    }

    /// [`Grid::load_movingai`], and the characters of the map that are no MovingAI terrain
    /// (read as walls), for a warning.
    pub fn load_movingai_noting(path: &Path) -> Result<(Self, Vec<UnknownTerrain>)> {
        let text = crate::io::output::read_input_text(path, "map file")?;
        Self::parse_movingai_noting(&text)
            .with_context(|| format!("invalid map file {}", path.display()))
    }

    /// Parses the text of a MovingAI `.map` file; errors name the 1-based line.
    pub fn parse_movingai(text: &str) -> Result<Self> {
        Ok(Self::parse_movingai_noting(text)?.0)
    }

    /// [`Grid::parse_movingai`], and the characters that are no MovingAI terrain.
    pub fn parse_movingai_noting(text: &str) -> Result<(Self, Vec<UnknownTerrain>)> {
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).enumerate();
        let mut header = |key: &str| -> Result<String> {
            let (i, line) = lines
                .next()
                .with_context(|| format!("missing `{key}` header line"))?;
            let mut parts = line.split_whitespace();
            ensure!(
                parts.next() == Some(key),
                "line {}: expected `{key} ...`, found {line:?}",
                i + 1
            );
            Ok(parts.collect::<Vec<_>>().join(" "))
        };
        header("type")?;
        let parse_side = |s: String, key: &str| -> Result<usize> {
            let n: usize = s
                .trim()
                .parse()
                .with_context(|| format!("`{key}` is not a number: {s:?}"))?;
            ensure!(
                (1..=MAX_SIDE).contains(&n),
                "`{key}` {n} is outside 1..={MAX_SIDE}"
            );
            Ok(n)
        };
        let height = parse_side(header("height")?, "height")?;
        let width = parse_side(header("width")?, "width")?;
        header("map")?;
        let mut free = Vec::with_capacity(height * width);
        let mut unknown: Vec<UnknownTerrain> = Vec::new();
        for row in 0..height {
            let (i, line) = lines.next().with_context(|| {
                format!("map ends after {row} of {height} rows (line {})", row + 5)
            })?;
            let chars: Vec<char> = line.chars().collect();
            if chars.len() != width {
                bail!(
                    "line {}: row {row} has {} cells, expected width {width}",
                    i + 1,
                    chars.len()
                );
            }
            free.extend(chars.iter().map(|c| matches!(c, '.' | 'G' | 'S')));
            for &c in chars.iter().filter(|c| !".GS@OTW".contains(**c)) {
                match unknown.iter_mut().find(|u| u.character == c) {
                    Some(u) => u.cells += 1,
                    None => unknown.push(UnknownTerrain {
                        character: c,
                        cells: 1,
                        first_line: i + 1,
                    }),
                }
            }
        }
        for (i, line) in lines {
            ensure!(
                line.trim().is_empty(),
                "line {}: unexpected text after the last map row",
                i + 1
            );
        }
        let grid = Self {
            height,
            width,
            free,
        };
        Ok((grid, unknown))
    }

    /// The built-in generated world: a maze carved by a seeded depth-first search on the odd
    /// cells of an H x W lattice, with about 10% of the remaining inner walls knocked out so
    /// that the maze has loops (several routes to a goal, as soft policies like). Cells with
    /// odd row and odd column are always free.
    pub fn generate_maze(width: usize, height: usize, seed: u64) -> Result<Self> {
        ensure!(
            (3..=MAX_SIDE).contains(&width) && (3..=MAX_SIDE).contains(&height),
            "maze size {width}x{height} is outside 3x3..={MAX_SIDE}x{MAX_SIDE}"
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let mut grid = Self {
            height,
            width,
            free: vec![false; width * height],
        };
        let (rooms_r, rooms_c) = ((height - 1) / 2, (width - 1) / 2);
        let room = |r: usize, c: usize| (2 * r + 1) * width + 2 * c + 1;
        let mut visited = vec![false; rooms_r * rooms_c];
        let mut stack = vec![(0usize, 0usize)];
        visited[0] = true;
        grid.free[room(0, 0)] = true;
        while let Some(&(r, c)) = stack.last() {
            let mut next = [(0usize, 0usize); 4];
            let mut n = 0;
            for (dr, dc) in [(-1i64, 0i64), (0, 1), (1, 0), (0, -1)] {
                let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                if nr >= 0 && nc >= 0 && (nr as usize) < rooms_r && (nc as usize) < rooms_c {
                    let (nr, nc) = (nr as usize, nc as usize);
                    if !visited[nr * rooms_c + nc] {
                        next[n] = (nr, nc);
                        n += 1;
                    }
                }
            }
            if n == 0 {
                stack.pop();
                continue;
            }
            let (nr, nc) = next[rng.random_range(0..n)];
            visited[nr * rooms_c + nc] = true;
            grid.free[room(nr, nc)] = true;
            // The wall between two rooms sits halfway between their cells.
            grid.free[(room(r, c) + room(nr, nc)) / 2] = true;
            stack.push((nr, nc));
        }
        // Braid: open some inner walls that separate two free cells in a straight line.
        for row in 1..height - 1 {
            for col in 1..width - 1 {
                let cell = row * width + col;
                if grid.free[cell] || (row % 2 == 1) == (col % 2 == 1) {
                    continue;
                }
                let (a, b) = if row % 2 == 1 {
                    (cell - 1, cell + 1)
                } else {
                    (cell - width, cell + width)
                };
                if grid.free[a] && grid.free[b] && rng.random_bool(0.1) {
                    grid.free[cell] = true;
                }
            }
        }
        Ok(grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_crlf_and_rejects_short_rows() {
        let ok =
            Grid::parse_movingai("type octile\r\nheight 2\r\nwidth 3\r\nmap\r\n.@.\r\nGTS\r\n")
                .unwrap();
        assert_eq!(ok.free, vec![true, false, true, true, false, true]);
        let err = Grid::parse_movingai("type octile\nheight 2\nwidth 3\nmap\n...\n..\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn diagonal_needs_both_orthogonal_neighbours() {
        let g = Grid::parse_movingai("type octile\nheight 2\nwidth 2\nmap\n.@\n..\n").unwrap();
        // From (1,0) NE to (0,1) is blocked (target blocked); from (0,0) SE needs (0,1) free.
        assert!(!g.move_is_legal(0, 0, 5));
        assert!(g.move_is_legal(0, 0, 2));
        let actions = ActionSet {
            connectivity: Connectivity::Eight,
            stay: true,
        };
        let mask = g.move_mask(&actions);
        assert_eq!(mask[0], 1 << 2); // only S
        assert_eq!(mask[1], 0); // blocked
    }

    #[test]
    fn maze_is_connected_and_seeded() {
        let a = Grid::generate_maze(41, 31, 7).unwrap();
        assert_eq!(a, Grid::generate_maze(41, 31, 7).unwrap());
        assert_ne!(a, Grid::generate_maze(41, 31, 8).unwrap());
        // Every free cell is reachable from (1,1) with 4-moves.
        let mut seen = vec![false; a.cells()];
        let mut stack = vec![a.width + 1];
        seen[a.width + 1] = true;
        while let Some(c) = stack.pop() {
            for n in [c - 1, c + 1, c - a.width, c + a.width] {
                if a.free[n] && !seen[n] {
                    seen[n] = true;
                    stack.push(n);
                }
            }
        }
        assert_eq!(seen.iter().filter(|&&s| s).count(), a.free_cells());
    }
}
