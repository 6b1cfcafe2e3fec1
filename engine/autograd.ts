/**
 * Eager tape autograd (micrograd-style): walk the graph from the loss in
 * reverse topological order, call each node's backward rule, accumulate
 * gradients into leaves. Each rule runs inside `tidy` so its temporaries die
 * with it; each intermediate gradient is disposed as soon as it was consumed,
 * and each node is dropped (with the tensors only it saved) once it ran.
 * @module
 */
import { elementwise } from "./ops/_raw.ts";
import { fill } from "./ops/fill.ts";
import { gradEnabled, keep, noGrad, tidy, withGrad } from "./scope.ts";
import { type GradNode, installBackward, type Tensor } from "./tensor.ts";

/** Records `node` as the creator of `out` when grad mode is on and an input needs grad. */
export function record(out: Tensor, node: GradNode): Tensor {
  if (gradEnabled() && node.inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.node = node;
  } else node.saved?.forEach((t) => t.dispose());
  return out;
}

/** Gradient accumulation: a + b with no tape (the same kernel as the add op). */
const add = (a: Tensor, b: Tensor) => elementwise("add", [a, b], "a + b");

/** PyTorch's rule: the graph is freed by backward(), so a second pass through it is an error. */
function freedGraph(): Error {
  return new Error(
    "backward(): this graph was already freed by an earlier backward(); compute the loss again " +
      "(gradients accumulate into .grad across passes)",
  );
}

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length) {
    const [t, done] = stack.pop()!;
    if (done) {
      order.push(t);
      continue;
    }
    if (seen.has(t)) continue;
    seen.add(t);
    stack.push([t, true]);
    for (const x of t.node?.inputs ?? []) {
      if (x.graphFreed) throw freedGraph();
      if (x.requiresGrad && !seen.has(x)) stack.push([x, false]);
    }
  }
  return order; // inputs before outputs
}

/** Computes d root / d leaf for every leaf that requires grad, accumulating into `leaf.grad`. */
export function backward(root: Tensor, grad?: Tensor): void {
  if (root.graphFreed) throw freedGraph();
  if (!root.requiresGrad) {
    throw new Error("backward(): the tensor does not require grad (no input had requiresGrad)");
  }
  if (!grad && root.size !== 1) {
    throw new Error(
      `backward(): root has shape [${root.shape}]; pass a gradient or reduce to a scalar`,
    );
  }
  if (grad && grad.shape.join() !== root.shape.join()) {
    throw new Error(`backward(): gradient [${grad.shape}] does not match the root [${root.shape}]`);
  }
  noGrad(() => {
    const order = topoOrder(root);
    const grads = new Map<Tensor, Tensor>();
    grads.set(root, grad ? grad.view(grad.shape) : fill(root.shape, 1));
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      keep(g);
      const node = t.node;
      if (!node) {
        // a leaf: accumulate into .grad
        if (t.grad) {
          const s = keep(add(t.grad, g));
          t.grad.dispose();
          g.dispose();
          t.grad = s;
        } else t.grad = g;
        continue;
      }
      const inputGrads = tidy(() => {
        const out = node.backward(g);
        // A rule may hand g itself (or one tensor) to several inputs: give each its own view.
        const used = new Set<Tensor>([g]);
        return out.map((gi) => {
          if (!gi) return null;
          if (used.has(gi)) return gi.view(gi.shape);
          used.add(gi);
          return gi;
        });
      });
      node.inputs.forEach((x, k) => {
        const gi = inputGrads[k];
        if (!gi) return;
        keep(gi);
        if (!x.requiresGrad) return gi.dispose();
        if (gi.shape.join() !== x.shape.join()) {
          throw new Error(
            `backward(): ${node.op} gave a [${gi.shape}] gradient for a [${x.shape}] input`,
          );
        }
        const prev = grads.get(x);
        if (prev) {
          grads.set(x, keep(add(prev, gi)));
          prev.dispose();
          gi.dispose();
        } else grads.set(x, gi);
      });
      g.dispose();
      node.saved?.forEach((s) => s.dispose());
      t.node = null;
      t.graphFreed = true;
    }
  });
}

installBackward(backward);

/**
 * Activation recomputation: y = fn(x) computed with no tape, so none of fn's
 * intermediates stay alive for backward; only x does. The backward runs
 * fn(x) again with the tape on and backpropagates the incoming gradient
 * through it: `params` (what fn reads that needs a gradient) get their .grad
 * there, x's gradient flows on. The gradients are those of fn(x) taped
 * directly: the same kernels on the same values.
 */
export function checkpoint(fn: (x: Tensor) => Tensor, x: Tensor, params: Tensor[]): Tensor {
  if (!gradEnabled() || !(x.requiresGrad || params.some((p) => p.requiresGrad))) return fn(x);
  const y = tidy(() => noGrad(() => fn(x)));
  return record(y, {
    op: "checkpoint",
    inputs: [x, ...params],
    backward: (g) => {
      const dx = withGrad(() =>
        tidy(() => {
          const xr = x.view(x.shape); // a leaf standing for x in the recomputed graph
          xr.requiresGrad = x.requiresGrad;
          backward(fn(xr), g);
          const d = xr.grad;
          xr.grad = null;
          return d;
        })
      );
      return [dx, ...params.map(() => null)];
    },
  });
}
