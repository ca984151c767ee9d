/** Tolerances, one place, constant in the ring size. Relative error = max|x - ref| / max(max|ref|, tiny). */
export const TOL = {
  fp32Forward: 1e-5,
  fp32Grad: 1e-4,
  /** Ring against single-device blockwise (both fp32). */
  ringVsSingle: 1e-5,
  bf16Forward: 1e-2,
  bf16Grad: 2e-2,
} as const;
