"""Fit the degree-6 polynomial for exp(r) on [-ln2/2, ln2/2] used by the AVX2 SiLU
(yolo-core/src/cpu/simd.rs, `fma::P`): exp(r) ~ 1 + r + r^2 * (P0 + P1 r + ... + P4 r^4),
minimax in relative error, by Lawson's iteratively reweighted least squares.

    python tools/fit_exp_poly.py     # numpy only; prints the coefficients and the error
"""
import numpy as np

half = np.log(2) / 2
r = np.cos(np.linspace(0, np.pi, 4001)) * half
r = r[np.abs(r) > 1e-6]
target = (np.exp(r) - 1 - r) / r**2
V = np.vander(r, 5, increasing=True)
# Least squares on the relative error of exp: weight the rows by r^2 / exp(r).
scale = (r**2 / np.exp(r))[:, None]
w = np.ones_like(r)
for _ in range(200):
    sw = np.sqrt(w)[:, None]
    c, *_ = np.linalg.lstsq(V * scale * sw, (target * scale[:, 0] * sw[:, 0]), rcond=None)
    err = (1 + r + r**2 * (V @ c)) / np.exp(r) - 1
    w = w * np.abs(err)
    w /= w.sum()
c32 = c.astype(np.float32)
dense = np.linspace(-half, half, 200001)
worst = np.abs((1 + dense + dense**2 * np.polyval(c32[::-1].astype(np.float64), dense)) / np.exp(dense) - 1).max()
print("P =", [float(x) for x in c32])
print(f"max relative error (f32 coefficients, exact arithmetic): {worst:.2e}")
