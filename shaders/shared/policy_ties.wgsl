// The hard-max policy (alpha = 0): one-hot on the first action, in action order, whose Q ties
// with the largest. CPU twin: `engine::cpu::write_policy`.

// Two Q values closer than this (relative to max(1, |max Q|)) tie. Same as
// `engine::cpu::TIE_RELATIVE`.
const TIE_RELATIVE: f32 = 1e-5;

// The Q at or above which an action ties with the largest Q, `top`.
fn tie_threshold(top: f32) -> f32 {
    return top - TIE_RELATIVE * max(1.0, abs(top));
}

// pi(a|s) of the next action in order, whose Q is `q`: 1 for the first action that reaches
// `tie`, 0 for every other; `chosen` records whether one has been picked (start it false).
fn one_hot(q: f32, tie: f32, chosen: ptr<function, bool>) -> f32 {
    let pick = !(*chosen) && q >= tie;
    *chosen = *chosen || pick;
    return select(0.0, 1.0, pick);
}
