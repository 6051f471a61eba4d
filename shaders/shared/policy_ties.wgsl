// The hard-max policy (alpha = 0, or alpha too small for f32 to resolve the soft policy):
// one-hot on the first action, in action order, whose Q ties with the largest. CPU twin:
// `engine::cpu::write_policy`.

// Two Q values closer than this (relative to max(1, |max Q|)) tie. Same as
// `engine::cpu::TIE_RELATIVE`.
const TIE_RELATIVE: f32 = 1e-5;
const LN_2: f32 = 0.6931472;

// Whether f32 resolves the soft policy exp((Q - V) / alpha) of a state whose largest Q is
// `top`, at temperature alpha given as `alpha_ln2` = alpha * ln(2) (the kernels' uniform). Q
// carries f32 rounding of a few ulps of |Q| per backup, up to about 1e-6 |V| after many
// sweeps, and the policy multiplies it by 1 / alpha; below the hard max's tie width
// TIE_RELATIVE * max(1, |top|) that noise decides the policy, so the policy is the hard max's
// one-hot (V keeps its soft form, whose alpha * log|A| term is then a few ulps of V at most).
// Same rule as `engine::cpu::soft_policy_resolved`.
fn soft_policy_resolved(alpha_ln2: f32, top: f32) -> bool {
    return alpha_ln2 >= LN_2 * TIE_RELATIVE * max(1.0, abs(top));
}

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
