/** Tolerances, one place, constant in the ring size. Relative error = max|x - ref| / max(max|ref|, tiny). */
export const TOL = {
  fp32Forward: 1e-5,
  /** Gradients sum over every key (dq) or query (dk, dv): the worst seen over many fresh problems was
   *  4e-6 (C and TypeScript kernels, the ring and the CLI); 2e-5 keeps a 5x margin. */
  fp32Grad: 2e-5,
  /** Ring against single-device blockwise (both fp32). */
  ringVsSingle: 1e-5,
  bf16Forward: 1e-2,
  bf16Grad: 2e-2,
} as const;
