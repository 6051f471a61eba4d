// alpha * log sum_i exp(x_i / alpha), shifted by the largest x so that no term overflows, in
// base 2: `scale` is log2(e) / alpha and `alpha_ln2` is alpha * ln(2), as the kernels' uniforms
// carry them. CPU twin: `engine::cpu::soft_max`.

// exp((x - top) / alpha): x's term shifted by `top`; with top the log-sum-exp, x's softmax
// weight.
fn exp_shifted(x: f32, top: f32, scale: f32) -> f32 {
    return exp2((x - top) * scale);
}

// A running log-sum-exp over terms that arrive one at a time, (largest x so far, sum of the
// terms shifted by it): start at vec2(x_0, 1.0) and push the others; a larger x rescales the
// sum. An x_0 of -inf is rescaled to nothing by the first finite x.
fn lse_push(acc: vec2<f32>, x: f32, scale: f32) -> vec2<f32> {
    // An excluded term (-inf) adds nothing; pushed onto a running -inf it would make
    // exp2(-inf - -inf) = NaN.
    if x < -HUGE {
        return acc;
    }
    if x > acc.x {
        return vec2<f32>(x, acc.y * exp_shifted(acc.x, x, scale) + 1.0);
    }
    return vec2<f32>(acc.x, acc.y + exp_shifted(x, acc.x, scale));
}

// The log-sum-exp of a running pair, or of (the largest x, the sum of the terms shifted by it).
fn lse_value(acc: vec2<f32>, alpha_ln2: f32) -> f32 {
    return acc.x + alpha_ln2 * log2(acc.y);
}
