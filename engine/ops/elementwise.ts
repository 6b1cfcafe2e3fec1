/**
 * Elementwise ops with numpy broadcasting. Each op is one row of a table:
 * its WGSL expression, its backward rule, and its CPU reference.
 * @module
 */
import { record } from "../autograd.ts";
import { Tensor } from "../tensor.ts";
import { elementwise, sumTo } from "./_raw.ts";
import { mapN, type NDArray } from "./_reference.ts";

// ---- unary ops: y = f(x) -------------------------------------------------------------

export interface UnaryDef {
  expr: string;
  /** dL/dx from dL/dy = g, the input x and the output y. */
  backward: (g: Tensor, x: Tensor, y: Tensor) => Tensor;
  reference: (x: number) => number;
}

const sig = (x: number) => 1 / (1 + Math.exp(-x));

/** Every unary op; the table type below makes the compiler reject one without a rule. */
export type UnaryOp =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "sigmoid"
  | "silu"
  | "tanh"
  | "square"
  | "abs";

export const unaryOps: { [K in UnaryOp]: UnaryDef } = {
  neg: { expr: "-a", backward: (g) => neg(g), reference: (x) => -x },
  // dy/dx = y
  exp: { expr: "exp(a)", backward: (g, _x, y) => mul(g, y), reference: Math.exp },
  // dy/dx = 1/x
  log: { expr: "log(a)", backward: (g, x) => div(g, x), reference: Math.log },
  // dy/dx = 0.5 / y
  sqrt: {
    expr: "sqrt(a)",
    backward: (g, _x, y) => div(mulScalar(g, 0.5), y),
    reference: Math.sqrt,
  },
  // dy/dx = -0.5 y^3
  rsqrt: {
    expr: "inverseSqrt(a)",
    backward: (g, _x, y) => mul(g, mulScalar(mul(y, mul(y, y)), -0.5)),
    reference: (x) => 1 / Math.sqrt(x),
  },
  // dy/dx = y (1 - y)
  sigmoid: {
    expr: "1.0 / (1.0 + exp(-a))",
    backward: (g, _x, y) => mul(g, mul(y, rsubScalar(y, 1))),
    reference: sig,
  },
  // dy/dx = s (1 + x (1 - s)), s = sigmoid(x)
  silu: {
    expr: "a / (1.0 + exp(-a))",
    backward: (g, x) =>
      elementwise(
        "silu_backward",
        [g, x],
        "a * (1.0 / (1.0 + exp(-b))) * (1.0 + b - b / (1.0 + exp(-b)))",
      ),
    reference: (x) => x * sig(x),
  },
  // dy/dx = 1 - y^2
  tanh: {
    expr: "tanh(a)",
    backward: (g, _x, y) => mul(g, rsubScalar(mul(y, y), 1)),
    reference: Math.tanh,
  },
  // dy/dx = 2x
  square: { expr: "a * a", backward: (g, x) => mul(g, mulScalar(x, 2)), reference: (x) => x * x },
  // dy/dx = sign(x)
  abs: {
    expr: "abs(a)",
    backward: (g, x) => mul(g, elementwise("sign", [x], "sign(a)")),
    reference: Math.abs,
  },
};

function unary(op: UnaryOp, x: Tensor): Tensor {
  const def: UnaryDef = unaryOps[op];
  const y = elementwise(op, [x], def.expr);
  return record(y, { op, inputs: [x], backward: (g) => [def.backward(g, x, y)] });
}

export const neg = (x: Tensor): Tensor => unary("neg", x);
export const exp = (x: Tensor): Tensor => unary("exp", x);
export const log = (x: Tensor): Tensor => unary("log", x);
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
export const rsqrt = (x: Tensor): Tensor => unary("rsqrt", x);
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
export const silu = (x: Tensor): Tensor => unary("silu", x);
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
export const square = (x: Tensor): Tensor => unary("square", x);
export const abs = (x: Tensor): Tensor => unary("abs", x);

// ---- scalar ops: y = f(x, alpha) -----------------------------------------------------

export interface ScalarDef {
  expr: string;
  backward: (g: Tensor, x: Tensor, alpha: number) => Tensor;
  reference: (x: number, alpha: number) => number;
}

export type ScalarOp =
  | "addScalar"
  | "mulScalar"
  | "rsubScalar"
  | "powScalar"
  | "minScalar"
  | "maxScalar";

export const scalarOps: { [K in ScalarOp]: ScalarDef } = {
  addScalar: { expr: "a + alpha", backward: (g) => g, reference: (x, s) => x + s },
  mulScalar: {
    expr: "a * alpha",
    backward: (g, _x, s) => mulScalar(g, s),
    reference: (x, s) => x * s,
  },
  // alpha - x
  rsubScalar: { expr: "alpha - a", backward: (g) => neg(g), reference: (x, s) => s - x },
  // dy/dx = alpha x^(alpha-1); x >= 0 for non-integer alpha
  powScalar: {
    expr:
      "select(pow(abs(a), alpha), select(-1.0, 1.0, fract(alpha * 0.5) == 0.0) * pow(abs(a), alpha), a < 0.0 && fract(alpha) == 0.0)",
    backward: (g, x, s) => mul(g, mulScalar(powScalar(x, s - 1), s)),
    reference: (x, s) => x ** s,
  },
  minScalar: {
    expr: "min(a, alpha)",
    backward: (g, x, s) => mul(g, elementwise("lt", [x], "select(0.0, 1.0, a < alpha)", s)),
    reference: (x, s) => Math.min(x, s),
  },
  maxScalar: {
    expr: "max(a, alpha)",
    backward: (g, x, s) => mul(g, elementwise("gt", [x], "select(0.0, 1.0, a > alpha)", s)),
    reference: (x, s) => Math.max(x, s),
  },
};

function scalarOp(op: ScalarOp, x: Tensor, alpha: number): Tensor {
  const def: ScalarDef = scalarOps[op];
  const y = elementwise(op, [x], def.expr, alpha);
  return record(y, { op, inputs: [x], backward: (g) => [def.backward(g, x, alpha)] });
}

export const addScalar = (x: Tensor, s: number): Tensor => scalarOp("addScalar", x, s);
export const mulScalar = (x: Tensor, s: number): Tensor => scalarOp("mulScalar", x, s);
export const rsubScalar = (x: Tensor, s: number): Tensor => scalarOp("rsubScalar", x, s);
export const powScalar = (x: Tensor, s: number): Tensor => scalarOp("powScalar", x, s);
export const minScalar = (x: Tensor, s: number): Tensor => scalarOp("minScalar", x, s);
export const maxScalar = (x: Tensor, s: number): Tensor => scalarOp("maxScalar", x, s);

// ---- binary ops with broadcasting: y = f(a, b) ----------------------------------------

export interface BinaryDef {
  expr: string;
  /**
   * Gradients at the broadcast output shape (reduced to each input's shape
   * afterwards); `need` says which inputs require one, so no work is wasted.
   */
  backward: (
    g: Tensor,
    a: Tensor,
    b: Tensor,
    need: [boolean, boolean],
  ) => [Tensor | null, Tensor | null];
  reference: (a: number, b: number) => number;
}

export type BinaryOp = "add" | "sub" | "mul" | "div" | "maximum" | "siluMul";

export const binaryOps: { [K in BinaryOp]: BinaryDef } = {
  add: { expr: "a + b", backward: (g) => [g, g], reference: (a, b) => a + b },
  sub: {
    expr: "a - b",
    backward: (g, _a, _b, [, nb]) => [g, nb ? neg(g) : null],
    reference: (a, b) => a - b,
  },
  mul: {
    expr: "a * b",
    backward: (g, a, b, [na, nb]) => [na ? mul(g, b) : null, nb ? mul(g, a) : null],
    reference: (a, b) => a * b,
  },
  // d/da = 1/b, d/db = -a/b^2
  div: {
    expr: "a / b",
    backward: (
      g,
      a,
      b,
      [na, nb],
    ) => [na ? div(g, b) : null, nb ? neg(div(mul(g, a), mul(b, b))) : null],
    reference: (a, b) => a / b,
  },
  // gradient to the larger input (to a on ties)
  maximum: {
    expr: "max(a, b)",
    backward: (g, a, b) => {
      const m = elementwise("ge", [a, b], "select(0.0, 1.0, a >= b)");
      return [mul(g, m), mul(g, rsubScalar(m, 1))];
    },
    reference: Math.max,
  },
  // silu(a) * b, the gated MLP's product in one pass. The backward rules are mul's and silu's
  // expressions in their order, so the gradients are the same bits as silu then mul.
  siluMul: {
    expr: "a / (1.0 + exp(-a)) * b",
    backward: (g, a, b, [na, nb]) => [
      na
        ? elementwise(
          "silu_mul_backward_a",
          [g, a, b],
          "(a * c) * (1.0 / (1.0 + exp(-b))) * (1.0 + b - b / (1.0 + exp(-b)))",
        )
        : null,
      nb ? elementwise("silu_mul_backward_b", [g, a], "a * (b / (1.0 + exp(-b)))") : null,
    ],
    reference: (a, b) => a * sig(a) * b,
  },
};

function binary(op: BinaryOp, a: Tensor, b: Tensor): Tensor {
  const def: BinaryDef = binaryOps[op];
  const y = elementwise(op, [a, b], def.expr);
  return record(y, {
    op,
    inputs: [a, b],
    backward: (g) => {
      const need: [boolean, boolean] = [a.requiresGrad, b.requiresGrad];
      const [ga, gb] = def.backward(g, a, b, need);
      return [need[0] && ga ? sumTo(ga, a.shape) : null, need[1] && gb ? sumTo(gb, b.shape) : null];
    },
  });
}

export const add = (a: Tensor, b: Tensor): Tensor => binary("add", a, b);
export const sub = (a: Tensor, b: Tensor): Tensor => binary("sub", a, b);
export const mul = (a: Tensor, b: Tensor): Tensor => binary("mul", a, b);
export const div = (a: Tensor, b: Tensor): Tensor => binary("div", a, b);
export const maximum = (a: Tensor, b: Tensor): Tensor => binary("maximum", a, b);
/** silu(a) * b: the gated MLP's product, one dispatch instead of two. */
export const siluMul = (a: Tensor, b: Tensor): Tensor => binary("siluMul", a, b);

/** 1 where a == b else 0 (no gradient). */
export function equal(a: Tensor, b: Tensor): Tensor {
  return elementwise("equal", [a, b], "select(0.0, 1.0, a == b)");
}

/** cond ? a : b elementwise (cond nonzero is true), with broadcasting. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  const y = elementwise("where", [cond, a, b], "select(c, b, a != 0.0)");
  return record(y, {
    op: "where",
    inputs: [cond, a, b],
    backward: (g) => {
      const zero = Tensor.zeros([1]);
      const ga = elementwise("where_ga", [cond, g, zero], "select(c, b, a != 0.0)");
      const gb = elementwise("where_gb", [cond, zero, g], "select(c, b, a != 0.0)");
      zero.dispose();
      return [null, sumTo(ga, a.shape), sumTo(gb, b.shape)];
    },
  });
}

/** CPU references, keyed like the ops, for the tests. */
export const elementwiseReference: {
  unary(op: UnaryOp, x: NDArray): NDArray;
  scalar(op: ScalarOp, x: NDArray, s: number): NDArray;
  binary(op: BinaryOp, a: NDArray, b: NDArray): NDArray;
  where(c: NDArray, a: NDArray, b: NDArray): NDArray;
} = {
  unary: (op: UnaryOp, x: NDArray): NDArray => mapN([x], unaryOps[op].reference),
  scalar: (op: ScalarOp, x: NDArray, s: number): NDArray =>
    mapN([x], (v) => scalarOps[op].reference(v, s)),
  binary: (op: BinaryOp, a: NDArray, b: NDArray): NDArray => mapN([a, b], binaryOps[op].reference),
  where: (c: NDArray, a: NDArray, b: NDArray): NDArray =>
    mapN([c, a, b], (cv, av, bv) => (cv !== 0 ? av : bv)),
};
