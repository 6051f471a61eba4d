//! The pure planners, no GPU: row/task bands of a grid (`plan_grid_bands`) and state/task
//! bands of a CSR MDP (`plan_mdp_bands`) under a binding-size limit (both on the one
//! `bands::plan_bands`), the workgroups of a band's dispatch (`band_dispatch`), the check schedule
//! (`check_windows`, `sweep_budget`), and the masks and fixed/excluded cells of
//! `GridInputs::new` on a hand-drawn map. Every expectation is written here from the contract,
//! not read back from the code under test.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::gpu::bands::{Band, band_dispatch};
use softvi::engine::gpu::grid_engine::plan_grid_bands;
use softvi::engine::gpu::mdp_engine::plan_mdp_bands;
use softvi::engine::layout::GridInputs;
use softvi::engine::schedule::{CHECK_INTERVAL, check_windows, sweep_budget};
use softvi::{
    ActionSet, Backup, Connectivity, Grid, GridProblem, GridTask, Horizon, MoveCost, SolveOptions,
};

/// Most workgroups in one dispatch dimension (wgpu's `max_compute_workgroups_per_dimension`
/// default); a band's tasks run along one dimension.
const MAX_DISPATCH: usize = 65_535;
/// The same limit as the planners take it.
const MAX_WORKGROUPS: u32 = MAX_DISPATCH as u32;

/// Room the MDP planner may keep below the limit for binding-offset alignment (offsets align
/// down to at most 256 bytes). Generous on purpose: this bounds how wasteful a plan may be.
const ALIGNMENT_ALLOWANCE: u64 = 1024;

/// The same for the grid planner, which keeps its alignment room in cells: up to 64 cells,
/// more than the 256 bytes alignment needs once a cell is over 4 bytes (a policy band's 36),
/// so the bound here is 1 KiB or 64 cells, whichever is larger.
fn grid_allowance(bytes_per_cell: u64) -> u64 {
    ALIGNMENT_ALLOWANCE.max(64 * bytes_per_cell)
}

// ---------------------------------------------------------------------------------------
// plan_grid_bands

/// Checks the contract of a grid plan: every (task, row) exactly once, bands of whole tasks
/// or of rows of one task, each band's per-cell array within `max_binding` (a band of rows
/// with a halo row above and below it, the rows its backup reads).
fn check_grid_plan(
    bands: &[Band],
    tasks: usize,
    height: usize,
    width: usize,
    bytes_per_cell: u64,
    max_binding: u64,
) {
    let label =
        format!("{tasks} tasks of {height}x{width}, {bytes_per_cell} B/cell, {max_binding} B");
    let mut covered = vec![0u32; tasks * height];
    for band in bands {
        assert!(
            band.task_count >= 1 && band.count >= 1,
            "{label}: empty {band:?}"
        );
        assert!(
            band.task_count <= MAX_DISPATCH,
            "{label}: {band:?} over one dispatch"
        );
        assert!(
            band.task_base + band.task_count <= tasks,
            "{label}: {band:?}"
        );
        assert!(band.first + band.count <= height, "{label}: {band:?}");
        let cell_bytes = width as u64 * bytes_per_cell;
        if band.count == height {
            assert_eq!(band.first, 0, "{label}: {band:?}");
            let bytes = band.task_count as u64 * height as u64 * cell_bytes;
            assert!(bytes <= max_binding, "{label}: {band:?} needs {bytes} B");
        } else {
            assert_eq!(
                band.task_count, 1,
                "{label}: a row band spans one task: {band:?}"
            );
            let bytes = (band.count as u64 + 2) * cell_bytes;
            assert!(
                bytes <= max_binding,
                "{label}: {band:?} with halo needs {bytes} B"
            );
        }
        for t in band.task_base..band.task_base + band.task_count {
            for r in band.first..band.first + band.count {
                covered[t * height + r] += 1;
            }
        }
    }
    for (i, &n) in covered.iter().enumerate() {
        assert_eq!(
            n,
            1,
            "{label}: task {} row {} covered {n} times",
            i / height,
            i % height
        );
    }
}

/// Sizes that are not multiples of the 64-invocation workgroup (nor of the 4-cell quad),
/// under limits from "everything in one band" down to "one row per band".
#[test]
fn grid_bands_cover_every_row_once_within_the_limit() {
    let (mut multi_task, mut row_banded) = (0, 0);
    for (tasks, height, width) in [(5, 37, 53), (3, 101, 67), (1, 7, 1000), (9, 1, 129)] {
        for bytes_per_cell in [4u64, 4 * 9] {
            let task_bytes = (height * width) as u64 * bytes_per_cell;
            let row_bytes = width as u64 * bytes_per_cell;
            let limits = [
                1 << 30,
                2 * task_bytes + grid_allowance(bytes_per_cell),
                task_bytes + grid_allowance(bytes_per_cell),
                task_bytes - 1,
                task_bytes / 3,
                5 * row_bytes + grid_allowance(bytes_per_cell),
                3 * row_bytes + grid_allowance(bytes_per_cell),
            ];
            // Under one row and its two halo rows (plus alignment) a plan may fail: that case
            // has its own test.
            let workable = limits
                .into_iter()
                .filter(|&l| l >= 3 * row_bytes + grid_allowance(bytes_per_cell));
            for max_binding in workable {
                let bands = plan_grid_bands(
                    tasks,
                    height,
                    width,
                    bytes_per_cell,
                    max_binding,
                    MAX_WORKGROUPS,
                )
                .unwrap();
                check_grid_plan(&bands, tasks, height, width, bytes_per_cell, max_binding);
                multi_task += bands.iter().any(|b| b.task_count > 1) as usize;
                row_banded += bands.iter().any(|b| b.count < height) as usize;
            }
        }
    }
    // Both kinds of plan were exercised.
    assert!(
        multi_task >= 4 && row_banded >= 4,
        "{multi_task} {row_banded}"
    );
}

/// A plan is not needlessly fine: a limit with room for k whole tasks (or for k rows and their
/// halo) gives bands of at least k tasks (or k rows), and a task that fits is never cut.
#[test]
fn grid_bands_use_the_room_they_are_given() {
    let (tasks, height, width, bpc) = (7, 37, 53, 4u64);
    let task_bytes = (height * width) as u64 * bpc;
    let row_bytes = width as u64 * bpc;

    let bands = plan_grid_bands(tasks, height, width, bpc, 1 << 30, MAX_WORKGROUPS).unwrap();
    assert_eq!(bands.len(), 1, "{bands:?}");

    let bands = plan_grid_bands(
        tasks,
        height,
        width,
        bpc,
        3 * task_bytes + grid_allowance(bpc),
        MAX_WORKGROUPS,
    )
    .unwrap();
    assert!(bands.iter().all(|b| b.count == height), "{bands:?}");
    assert!(
        bands[..bands.len() - 1].iter().all(|b| b.task_count >= 3),
        "{bands:?}"
    );
    assert_eq!(bands.len(), 3, "7 tasks, 3 per band: {bands:?}");

    let bands = plan_grid_bands(
        tasks,
        height,
        width,
        bpc,
        task_bytes + grid_allowance(bpc),
        MAX_WORKGROUPS,
    )
    .unwrap();
    assert_eq!(bands.len(), tasks, "one whole task per band: {bands:?}");
    assert!(bands.iter().all(|b| b.count == height && b.task_count == 1));

    // Room for 10 rows and 2 halo rows: 37 rows need ceil(37 / 10) = 4 bands per task.
    let bands = plan_grid_bands(
        tasks,
        height,
        width,
        bpc,
        12 * row_bytes + grid_allowance(bpc),
        MAX_WORKGROUPS,
    )
    .unwrap();
    for t in 0..tasks {
        let of_task: Vec<&Band> = bands.iter().filter(|b| b.task_base == t).collect();
        assert!(of_task.len() <= 4, "task {t}: {of_task:?}");
    }
}

/// The smallest workable limit: one row and its two halo rows. Every band is then one row,
/// and the neighbours each row's backup reads fit next to it.
#[test]
fn grid_bands_of_one_row_keep_room_for_both_halo_rows() {
    let (tasks, height, width, bpc) = (2, 9, 1000, 4u64);
    let max_binding = 3 * width as u64 * bpc + grid_allowance(bpc);
    let bands = plan_grid_bands(tasks, height, width, bpc, max_binding, MAX_WORKGROUPS).unwrap();
    assert_eq!(bands.len(), tasks * height, "{bands:?}");
    assert!(bands.iter().all(|b| b.count == 1 && b.task_count == 1));
    check_grid_plan(&bands, tasks, height, width, bpc, max_binding);
}

/// Below one row and its halo the planner refuses, naming the limit it was given.
#[test]
fn grid_limit_too_small_is_an_error_naming_the_limit() {
    let (height, width, bpc) = (9, 1000, 4u64);
    // Two rows' worth: a row cannot be read with both neighbours.
    for max_binding in [2 * width as u64 * bpc, 3 * width as u64 * bpc - 1, 100, 0] {
        let err = plan_grid_bands(1, height, width, bpc, max_binding, MAX_WORKGROUPS)
            .expect_err("a limit under three rows must fail")
            .to_string();
        assert!(
            err.contains(&format!(" {max_binding} bytes")),
            "error does not name the limit {max_binding}: {err}"
        );
        assert!(err.contains("max_storage_buffer_binding_size"), "{err}");
    }
}

/// More tasks than one dispatch dimension holds: bands split at 65535 tasks.
#[test]
fn grid_bands_split_batches_larger_than_one_dispatch() {
    let tasks = MAX_DISPATCH * 2 + 17;
    let bands = plan_grid_bands(tasks, 3, 5, 4, 1 << 30, MAX_WORKGROUPS).unwrap();
    assert_eq!(bands.len(), 3, "{:?}", &bands);
    assert_eq!(bands[2].task_count, 17);
    check_grid_plan(&bands, tasks, 3, 5, 4, 1 << 30);
}

/// An adapter allowing 7 workgroups per dimension: both planners put at most 7 tasks in a
/// band (its tasks run along one dimension), whatever room the binding has.
#[test]
fn bands_split_at_the_adapters_workgroup_limit() {
    let tasks = 7 * 2 + 3;
    let grid = plan_grid_bands(tasks, 3, 5, 4, 1 << 30, 7).unwrap();
    let counts: Vec<_> = grid.iter().map(|b| b.task_count).collect();
    assert_eq!(counts, [7, 7, 3], "{grid:?}");
    check_grid_plan(&grid, tasks, 3, 5, 4, 1 << 30);
    let mdp = plan_mdp_bands(tasks, 3, 12, 4, &|s| s as u64, 1 << 30, 7).unwrap();
    let counts: Vec<_> = mdp.iter().map(|b| b.task_count).collect();
    assert_eq!(counts, [7, 7, 3], "{mdp:?}");
    check_mdp_plan(&mdp, tasks, 3, 12, 4, &|s| s as u64, 1 << 30, "limit 7");
}

// ---------------------------------------------------------------------------------------
// band_dispatch

/// Workgroups of 64 invocations cover every item exactly: x * y * 64 >= items with less than
/// one row of x workgroups to spare, x within the limit, z = tasks; nothing to do is
/// [0, 0, 0]; a y or z past the limit is an error naming it, never a clamp that would skip
/// work. Item counts not multiples of 64, and on both sides of x's limit.
#[test]
fn band_dispatch_covers_every_item_within_the_limits() {
    for (items, tasks, limit) in [
        (1usize, 1usize, 65_535u32),
        (63, 3, 65_535),
        (64, 1, 65_535),
        (65, 2, 65_535),
        (64 * 7 + 1, 5, 7),
        (64 * 49, 1, 7),
        (100_003, 9, 100),
    ] {
        let (dispatch, groups) = band_dispatch(items, tasks, limit).unwrap();
        let [x, y, z] = dispatch.map(|d| d as usize);
        assert_eq!(groups as usize, items.div_ceil(64), "{items} items");
        assert!(
            x >= 1 && x <= limit as usize && y <= limit as usize,
            "{dispatch:?}"
        );
        assert!(x * y * 64 >= items, "{items} items: {dispatch:?} too small");
        assert!(
            x * (y - 1) * 64 < items,
            "{items} items: {dispatch:?} a spare row"
        );
        assert_eq!(z, tasks);
    }
    assert_eq!(band_dispatch(0, 4, 7).unwrap().0, [0, 0, 0]);
    // 64 * 7 * 7 items fill a 7-limited dispatch; one more needs y = 8.
    assert!(band_dispatch(64 * 49, 1, 7).is_ok());
    let err = band_dispatch(64 * 49 + 1, 1, 7).unwrap_err();
    assert!(
        err.to_string()
            .contains("max_compute_workgroups_per_dimension"),
        "{err}"
    );
    assert!(
        band_dispatch(10, 8, 7).is_err(),
        "8 tasks along z past a limit of 7"
    );
}

// ---------------------------------------------------------------------------------------
// plan_mdp_bands

/// A CSR row-pointer over `states * actions` rows with 1 to 5 entries per row, and `heavy`
/// states holding `heavy_entries` entries per action.
fn csr_indptr(
    states: usize,
    actions: usize,
    heavy: &[usize],
    heavy_entries: u64,
    seed: u64,
) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut indptr = vec![0u64];
    for row in 0..states * actions {
        let n = if heavy.contains(&(row / actions)) {
            heavy_entries
        } else {
            rng.random_range(1..=5u64)
        };
        indptr.push(indptr.last().unwrap() + n);
    }
    indptr
}

/// Checks the contract of an MDP plan as the backup uses it: every (task, state) exactly once;
/// bands of whole tasks or of states of one task; the whole-task arrays, the state-windowed
/// arrays and the band's transition entries (4 bytes each) each within `max_binding`.
#[allow(clippy::too_many_arguments)]
fn check_mdp_plan(
    bands: &[Band],
    tasks: usize,
    states: usize,
    whole_task_bytes: u64,
    bytes_per_state: u64,
    entries_before: &dyn Fn(usize) -> u64,
    max_binding: u64,
    label: &str,
) {
    let mut covered = vec![0u32; tasks * states];
    for band in bands {
        assert!(band.task_count >= 1 && band.count >= 1, "{label}: {band:?}");
        assert!(band.task_count <= MAX_DISPATCH, "{label}: {band:?}");
        let (s0, s1) = (band.first, band.first + band.count);
        assert!(
            band.task_base + band.task_count <= tasks && s1 <= states,
            "{label}: {band:?}"
        );
        if band.count < states {
            assert_eq!(
                band.task_count, 1,
                "{label}: a state band spans one task: {band:?}"
            );
        }
        let tasks_in = band.task_count as u64;
        assert!(
            tasks_in * whole_task_bytes <= max_binding,
            "{label}: {band:?} whole-task"
        );
        let windowed = tasks_in * band.count as u64 * bytes_per_state;
        assert!(
            windowed <= max_binding,
            "{label}: {band:?} needs {windowed} B"
        );
        let entry_bytes = (entries_before(s1) - entries_before(s0)) * 4;
        assert!(
            entry_bytes <= max_binding,
            "{label}: {band:?} entries {entry_bytes} B"
        );
        for t in band.task_base..band.task_base + band.task_count {
            for s in s0..s1 {
                covered[t * states + s] += 1;
            }
        }
    }
    for (i, &n) in covered.iter().enumerate() {
        assert_eq!(
            n,
            1,
            "{label}: task {} state {} covered {n} times",
            i / states,
            i % states
        );
    }
}

/// Backup-shaped plans (whole-task array: V, 4 B/state; windowed: 4 B per state and action)
/// of a 1003-state, 3-action MDP, under limits from "everything fits" down to bands of a few
/// states, with and without one heavy state.
#[test]
fn mdp_bands_cover_every_state_once_within_the_limit() {
    let (tasks, states, actions) = (6, 1003, 3);
    // A heavy state's transitions: 3 * 300 entries, 3600 B, within every limit below.
    let heavy_entries = 300;
    let mut state_banded = 0;
    for heavy in [vec![], vec![500]] {
        let indptr = csr_indptr(states, actions, &heavy, heavy_entries, 3);
        let entries = |s: usize| indptr[s * actions];
        let whole = states as u64 * 4;
        let per_state = actions as u64 * 4;
        let all_entries = entries(states) * 4;
        let limits = [
            1 << 30,
            2 * all_entries.max(whole) + ALIGNMENT_ALLOWANCE,
            all_entries - 1,
            whole + ALIGNMENT_ALLOWANCE,
            4 * heavy_entries * actions as u64 + ALIGNMENT_ALLOWANCE,
        ];
        for max_binding in limits {
            let label = format!("heavy {heavy:?}, limit {max_binding}");
            let bands = plan_mdp_bands(
                tasks,
                states,
                whole,
                per_state,
                &entries,
                max_binding,
                MAX_WORKGROUPS,
            )
            .unwrap();
            check_mdp_plan(
                &bands,
                tasks,
                states,
                whole,
                per_state,
                &entries,
                max_binding,
                &label,
            );
            state_banded += bands.iter().any(|b| b.count < states) as usize;
        }
    }
    // The last three limits force state bands, with and without the heavy state.
    assert_eq!(state_banded, 6);
}

/// State ranges are as long as the limit allows: one more state would not fit even with the
/// alignment allowance taken off the limit.
#[test]
fn mdp_state_bands_are_as_long_as_the_limit_allows() {
    let (states, actions) = (1003, 3);
    let indptr = csr_indptr(states, actions, &[77, 78, 640], 200, 11);
    let entries = |s: usize| indptr[s * actions];
    let max_binding = 3000 + ALIGNMENT_ALLOWANCE;
    let bands = plan_mdp_bands(2, states, 1000, 4, &entries, max_binding, MAX_WORKGROUPS).unwrap();
    assert!(
        bands.len() > 2 * 2,
        "the limit forces state bands: {bands:?}"
    );
    check_mdp_plan(&bands, 2, states, 1000, 4, &entries, max_binding, "ranges");
    let room = max_binding - ALIGNMENT_ALLOWANCE;
    for band in &bands {
        let (s0, s1) = (band.first, band.first + band.count);
        if s1 == states {
            continue;
        }
        let longer_entries = (entries(s1 + 1) - entries(s0)) * 4;
        let longer_states = (s1 + 1 - s0) as u64 * 4;
        assert!(
            longer_entries > room || longer_states > room,
            "{band:?} could take state {s1}: {longer_entries} B of entries"
        );
    }
}

/// Whole tasks per band when everything fits: no state band, and as many tasks as the limit
/// holds (up to one dispatch dimension).
#[test]
fn mdp_whole_task_bands_pack_tasks() {
    // One transition entry per state and action: the entries never limit this plan.
    let (states, actions) = (101, 2);
    let entries = |s: usize| (s * actions) as u64;
    let task_bytes = states as u64 * actions as u64 * 4;
    let bands = plan_mdp_bands(
        10,
        states,
        404,
        8,
        &entries,
        4 * task_bytes + ALIGNMENT_ALLOWANCE,
        MAX_WORKGROUPS,
    )
    .unwrap();
    assert!(bands.iter().all(|b| b.first == 0 && b.count == states));
    assert_eq!(bands.len(), 3, "10 tasks, 4 per band: {bands:?}");
    let tasks = 2 * MAX_DISPATCH + 1;
    let bands = plan_mdp_bands(tasks, 3, 12, 4, &|s| s as u64, 1 << 30, MAX_WORKGROUPS).unwrap();
    assert_eq!(bands.len(), 3, "{bands:?}");
    check_mdp_plan(&bands, tasks, 3, 12, 4, &|s| s as u64, 1 << 30, "dispatch");
}

/// A whole-task array over the limit, or one state whose transitions alone exceed it: an
/// error naming the limit (and the state).
#[test]
fn mdp_limit_too_small_is_an_error_naming_the_limit() {
    let (states, actions) = (1003, 3);
    let indptr = csr_indptr(states, actions, &[], 0, 1);
    let entries = |s: usize| indptr[s * actions];
    let max_binding = 4000;
    let err = plan_mdp_bands(
        1,
        states,
        states as u64 * 4,
        12,
        &entries,
        max_binding,
        MAX_WORKGROUPS,
    )
    .expect_err("4012 B of V per task over a 4000 B limit")
    .to_string();
    assert!(err.contains("4000 bytes"), "{err}");
    assert!(err.contains("1003 states"), "{err}");

    let indptr = csr_indptr(states, actions, &[321], 1000, 1);
    let entries = |s: usize| indptr[s * actions];
    let max_binding = 8000;
    let err = plan_mdp_bands(1, states, 100, 12, &entries, max_binding, MAX_WORKGROUPS)
        .expect_err("state 321 holds 3 * 1000 entries, 12000 B")
        .to_string();
    assert!(err.contains("8000 bytes"), "{err}");
    assert!(err.contains("state 321"), "{err}");
}

// ---------------------------------------------------------------------------------------
// check_windows, sweep_budget

#[test]
fn check_windows_cover_the_budget_in_full_intervals() {
    const { assert!(CHECK_INTERVAL >= 1) };
    let i = CHECK_INTERVAL;
    for total in [
        0,
        1,
        i - 1,
        i,
        i + 1,
        2 * i - 1,
        2 * i,
        2 * i + 1,
        1000,
        100_003,
    ] {
        let windows = check_windows(total);
        assert_eq!(windows.iter().sum::<u32>(), total, "{total}: {windows:?}");
        assert_eq!(
            windows.len() as u32,
            total.div_ceil(i),
            "{total}: one check per window"
        );
        if let Some((last, rest)) = windows.split_last() {
            assert!(rest.iter().all(|&w| w == i), "{total}: {windows:?}");
            assert!((1..=i).contains(last), "{total}: last window {last}");
        }
    }
    assert!(check_windows(0).is_empty());
    assert_eq!(check_windows(i + 3), vec![i, 3]);
}

#[test]
fn sweep_budget_is_the_horizon_or_the_iteration_cap() {
    assert_eq!(sweep_budget(&Horizon::Finite(37)), 37);
    let infinite = Horizon::Infinite {
        tol: 1e-6,
        max_iters: 1234,
    };
    assert_eq!(sweep_budget(&infinite), 1234);
    // The windows of a budget end exactly at the budget: a finite horizon runs T sweeps.
    for horizon in [Horizon::Finite(37), Horizon::Finite(16), infinite] {
        let budget = sweep_budget(&horizon);
        assert_eq!(
            check_windows(budget).iter().sum::<u32>(),
            budget,
            "{horizon:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// GridInputs::new

/// Height 4, width 5; column 3 is a wall, so the right column is cut off from the rest.
const MAP: [&str; 4] = ["...@.", ".@.@.", "...@.", "@..@."];

fn drawn_grid() -> Grid {
    let free = MAP
        .iter()
        .flat_map(|row| row.chars().map(|c| c == '.'))
        .collect();
    Grid {
        height: 4,
        width: 5,
        free,
    }
}

/// Tasks: goal at the top-left (X=0,Y=0); goal at the bottom-right (X=4,Y=3); one goal on
/// each side of the wall, with a reward map.
fn drawn_problem(connectivity: Connectivity, slip: f64) -> GridProblem {
    let reward: Vec<f32> = (0..20).map(|c| c as f32 / 10.0).collect();
    GridProblem {
        grid: drawn_grid(),
        actions: ActionSet {
            connectivity,
            stay: true,
        },
        slip,
        move_cost: MoveCost::default(),
        tasks: vec![
            GridTask {
                goals: vec![0],
                reward: None,
            },
            GridTask {
                goals: vec![19],
                reward: None,
            },
            GridTask {
                goals: vec![10, 4],
                reward: Some(reward),
            },
        ],
    }
}

/// Masks written as action names, checked against the bits of action order `names`.
fn masks_from_names(drawn: [[&str; 5]; 4], names: &[&str]) -> Vec<u32> {
    drawn
        .iter()
        .flatten()
        .map(|cell| {
            cell.split_whitespace()
                .map(|n| 1 << names.iter().position(|m| m == &n).unwrap())
                .sum()
        })
        .collect()
}

/// `#` where a flag is set, one string per row.
fn flags_from_drawing(drawn: &[[&str; 4]]) -> Vec<bool> {
    drawn
        .iter()
        .flatten()
        .flat_map(|row| row.chars().map(|c| c == '#'))
        .collect()
}

#[test]
fn move_masks_of_a_drawn_map_four_connected() {
    let options = SolveOptions::default();
    let inputs = GridInputs::new(&drawn_problem(Connectivity::Four, 0.0), &options);
    // A move is legal onto a free cell on the map; STAY never moves, walls get no moves.
    let expected = masks_from_names(
        [
            ["E S", "E W", "S W", "", "S"],
            ["N S", "", "N S", "", "N S"],
            ["N E", "E S W", "N S W", "", "N S"],
            ["", "N E", "N W", "", "N"],
        ],
        &["N", "E", "S", "W", "STAY"],
    );
    assert_eq!(inputs.move_mask, expected);
    assert_eq!(inputs.action_count, 5);
    assert_eq!(inputs.move_offset, vec![-5, 1, 5, -1, 0]);
    // Costs are copied from the default MoveCost, so they compare exactly.
    assert_eq!(inputs.step_cost, vec![1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn move_masks_of_a_drawn_map_eight_connected_without_corner_cutting() {
    let options = SolveOptions::default();
    let inputs = GridInputs::new(&drawn_problem(Connectivity::Eight, 0.0), &options);
    // A diagonal move needs its target and both orthogonal neighbours free: X=1,Y=2 may go
    // SE (X=2,Y=3: both X=2,Y=2 and X=1,Y=3 free) but not NE (X=1,Y=1 is a wall).
    let expected = masks_from_names(
        [
            ["E S", "E W", "S W", "", "S"],
            ["N S", "", "N S", "", "N S"],
            ["N E", "E S W SE", "N S W SW", "", "N S"],
            ["", "N E NE", "N W NW", "", "N"],
        ],
        &["N", "E", "S", "W", "NE", "SE", "SW", "NW", "STAY"],
    );
    assert_eq!(inputs.move_mask, expected);
    assert_eq!(inputs.move_offset, vec![-5, 1, 5, -1, -4, 6, 4, -6, 0]);
    // Costs are copied from the default MoveCost (diagonal sqrt 2), so they compare exactly.
    let d = std::f64::consts::SQRT_2;
    assert_eq!(inputs.step_cost, vec![1.0, 1.0, 1.0, 1.0, d, d, d, d, 0.0]);
}

/// gamma = 1 with an infinite horizon: cells that cannot reach a goal are excluded and fixed
/// (value -inf), on top of walls and goals.
#[test]
fn fixed_and_excluded_cells_of_a_drawn_map_at_gamma_one() {
    let options = SolveOptions {
        gamma: 1.0,
        ..SolveOptions::default()
    };
    for connectivity in [Connectivity::Four, Connectivity::Eight] {
        let inputs = GridInputs::new(&drawn_problem(connectivity, 0.1), &options);
        let excluded = flags_from_drawing(&[
            ["....#", "....#", "....#", "....#"],
            ["###..", "#.#..", "###..", ".##.."],
            [".....", ".....", ".....", "....."],
        ]);
        let fixed = flags_from_drawing(&[
            ["#..##", ".#.##", "...##", "#..##"],
            ["####.", "####.", "####.", "#####"],
            ["...##", ".#.#.", "#..#.", "#..#."],
        ]);
        let terminal = flags_from_drawing(&[
            ["#....", ".....", ".....", "....."],
            [".....", ".....", ".....", "....#"],
            ["....#", ".....", "#....", "....."],
        ]);
        assert_eq!(inputs.excluded, excluded, "{connectivity:?}");
        assert_eq!(inputs.fixed, fixed, "{connectivity:?}");
        assert_eq!(inputs.terminal, terminal, "{connectivity:?}");
        // Free non-goal cells cut off from every goal: 4 on the right, 10 on the left.
        assert_eq!(inputs.unreachable, vec![4, 10, 0], "{connectivity:?}");
        assert_eq!(inputs.free, drawn_grid().free);
        // One word of fixed bits per task (20 cells), bit c = cell c.
        assert_eq!(inputs.fixed_words_per_task(), 1);
        let words: Vec<u32> = fixed
            .chunks(20)
            .map(|f| (0..20).filter(|&c| f[c]).map(|c| 1u32 << c).sum())
            .collect();
        assert_eq!(inputs.fixed_bits(), words, "{connectivity:?}");
    }
}

/// Discounted or finite-horizon solves exclude nothing (values stay finite) but still count
/// the cells that cannot reach a goal; rewards are copied, 0 for a task without a map; slip
/// 0 runs the optimistic backup as the expected one.
#[test]
fn nothing_excluded_below_gamma_one_or_with_a_horizon() {
    let discounted = SolveOptions {
        gamma: 0.9,
        backup: Backup::Optimistic,
        ..SolveOptions::default()
    };
    let finite = SolveOptions {
        gamma: 1.0,
        horizon: Horizon::Finite(12),
        ..SolveOptions::default()
    };
    for options in [discounted, finite] {
        for slip in [0.0, 0.2] {
            let inputs = GridInputs::new(&drawn_problem(Connectivity::Eight, slip), &options);
            assert!(inputs.excluded.iter().all(|&e| !e), "{options:?}");
            let fixed = flags_from_drawing(&[
                ["#..#.", ".#.#.", "...#.", "#..#."],
                ["...#.", ".#.#.", "...#.", "#..##"],
                ["...##", ".#.#.", "#..#.", "#..#."],
            ]);
            assert_eq!(inputs.fixed, fixed, "{options:?}");
            assert_eq!(inputs.unreachable, vec![4, 10, 0]);
            // Rewards are copied f32 for f32: exact.
            assert_eq!(inputs.reward[..40], [0.0; 40]);
            let mapped: Vec<f32> = (0..20).map(|c| c as f32 / 10.0).collect();
            assert_eq!(inputs.reward[40..], mapped);
            let expected_backup = if slip == 0.0 {
                Backup::Expected
            } else {
                options.backup
            };
            assert_eq!(inputs.backup, expected_backup, "slip {slip}");
            assert_eq!((inputs.height, inputs.width, inputs.tasks), (4, 5, 3));
        }
    }
}

/// Fixed bits over more than one word: each task starts on a word boundary.
#[test]
fn fixed_bits_start_each_task_on_a_word() {
    // 5 x 7 = 35 cells: 2 words per task; goal cells 33 and 1, no walls.
    let problem = GridProblem {
        grid: Grid::open(5, 7),
        actions: ActionSet {
            connectivity: Connectivity::Four,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
        tasks: vec![
            GridTask {
                goals: vec![33],
                reward: None,
            },
            GridTask {
                goals: vec![1],
                reward: None,
            },
        ],
    };
    let inputs = GridInputs::new(&problem, &SolveOptions::default());
    assert_eq!(inputs.fixed_words_per_task(), 2);
    assert_eq!(inputs.fixed_bits(), vec![0, 1 << 1, 1 << 1, 0]);
}

// ---------------------------------------------------------------------------------------
// GridInputs::active_quads

/// Width 8, height 3: quad (row 0, quad column 1) and (row 2, quad column 0) are all walls and
/// must be skipped; the others are listed row-major with byte j of the masks = cell 4q + j.
#[test]
fn active_quads_skip_all_wall_quads_and_pack_masks_by_cell() {
    let drawn = ["...@@@@@", "........", "@@@@.@.."];
    let free: Vec<bool> = drawn
        .iter()
        .flat_map(|row| row.chars().map(|c| c == '.'))
        .collect();
    let problem = GridProblem {
        grid: Grid {
            height: 3,
            width: 8,
            free,
        },
        actions: ActionSet {
            connectivity: Connectivity::Four,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
        tasks: vec![GridTask {
            goals: vec![8],
            reward: None,
        }],
    };
    let inputs = GridInputs::new(&problem, &SolveOptions::default());
    let quads = inputs.active_quads();
    let keys: Vec<(u32, u32)> = quads.iter().map(|q| (q[0] >> 16, q[0] & 0xffff)).collect();
    assert_eq!(keys, [(0, 0), (1, 0), (1, 1), (2, 1)]);
    for (q, &(row, column)) in quads.iter().zip(&keys) {
        for j in 0..4 {
            let cell = row as usize * 8 + 4 * column as usize + j;
            assert_eq!(
                q[1] >> (8 * j) & 255,
                inputs.move_mask[cell] & 255,
                "quad ({row}, {column}) cell {j}"
            );
        }
    }
    // Row 0, cell 3 is a wall: no moves; cell 0 (top-left) moves E and S only (N E S W).
    assert_eq!(quads[0][1] >> 24 & 255, 0);
    assert_eq!(quads[0][1] & 255, 0b0110);
}
