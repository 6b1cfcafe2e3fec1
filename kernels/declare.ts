/**
 * A kernel declared once: its storage inputs and outputs, its named typed
 * parameters, its workgroup size and grid. The WGSL bindings and a named
 * parameter struct are generated here from the declaration, and
 * engine/launch.ts launches it with the same names, so no binding order or
 * parameter position is ever matched by hand (the pattern of
 * tfjs-backend-webgpu's programs and jax-js's routines).
 * @module
 */

/** A scalar parameter; `u32[N]` is a list (a shape, strides) read as `NAME_at(i)`. */
export type ParamType = "u32" | "i32" | "f32" | `u32[${number}]`;

/**
 * How the launch count maps to workgroups:
 * - `elements`: one invocation per element; `flat_index(gid, nwg)` gives it.
 * - `rows`: one workgroup per row; `row_index(wid, nwg)` gives the row.
 * - `workgroups`: the launch passes the workgroup counts itself (tiled kernels).
 */
export type Grid = "elements" | "rows" | "workgroups";

export interface KernelSpec<I extends string, O extends string, P extends string> {
  label: string;
  /** Read-only storage arrays in binding order: name -> WGSL element type. */
  inputs: Record<I, string>;
  /** Read-write storage arrays: name -> WGSL element type (e.g. `f32`, `atomic<i32>`). */
  outputs: Record<O, string>;
  /** Uniform parameters, read as `params.NAME` (lists as `NAME_at(i)`). */
  params: Record<P, ParamType>;
  grid: Grid;
  workgroupSize: readonly [number, number?, number?];
  /** WGSL after the generated declarations: helpers, workgroup memory. */
  helpers?: string;
  /**
   * The body of `main`, with the builtins `gid`, `lid`, `wid`, `nwg`
   * (global/local invocation id, workgroup id, number of workgroups) in scope.
   */
  main: string;
}

/** One parameter's place in the uniform block (in 32-bit words). */
export interface ParamSlot {
  name: string;
  type: ParamType;
  word: number;
  length: number;
}

/** A declared kernel: the spec, its generated WGSL and parameter layout. */
export interface Kernel<I extends string, O extends string, P extends string>
  extends KernelSpec<I, O, P> {
  wgsl: string;
  slots: ParamSlot[];
  /** Words of the uniform block (a multiple of 4). */
  paramWords: number;
}

function listLength(t: ParamType): number {
  const m = /^u32\[(\d+)\]$/.exec(t);
  return m ? Number(m[1]) : 0;
}

/** Generates the WGSL of a kernel from its declaration. */
export function declareKernel<I extends string, O extends string, P extends string>(
  spec: KernelSpec<I, O, P>,
): Kernel<I, O, P> {
  const entries = Object.entries(spec.params) as [string, ParamType][];
  const slots: ParamSlot[] = [];
  const members: string[] = [];
  let word = 0;
  // scalars first, then lists as vec4 arrays (uniform arrays need a 16-byte stride)
  for (const [name, type] of entries.filter(([, t]) => !listLength(t))) {
    slots.push({ name, type, word: word++, length: 1 });
    members.push(`${name}: ${type},`);
  }
  let pad = 0;
  while (word % 4) members.push(`pad_${pad++}: u32,`), word++;
  const accessors: string[] = [];
  for (const [name, type] of entries.filter(([, t]) => listLength(t))) {
    const n = listLength(type);
    const vecs = Math.ceil(n / 4);
    slots.push({ name, type, word, length: n });
    members.push(`${name}: array<vec4<u32>, ${vecs}>,`);
    accessors.push(`fn ${name}_at(i: u32) -> u32 { return params.${name}[i / 4u][i % 4u]; }`);
    word += 4 * vecs;
  }
  if (word === 0) members.push("pad_0: u32, pad_1: u32, pad_2: u32, pad_3: u32,"), word = 4;
  let binding = 1;
  const bindings = [
    ...Object.entries(spec.inputs).map(([name, type]) =>
      `@group(0) @binding(${binding++}) var<storage, read> ${name}: array<${type}>;`
    ),
    ...Object.entries(spec.outputs).map(([name, type]) =>
      `@group(0) @binding(${binding++}) var<storage, read_write> ${name}: array<${type}>;`
    ),
  ];
  const [x, y = 1, z = 1] = spec.workgroupSize;
  const wgsl = /* wgsl */ `// ${spec.label}
struct Params {
  ${members.join("\n  ")}
}
@group(0) @binding(0) var<uniform> params: Params;
${accessors.join("\n")}
${bindings.join("\n")}
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * ${x}u; }
fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }
${spec.helpers ?? ""}
@compute @workgroup_size(${x}, ${y}, ${z})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  {
${spec.main}
  }
}
`;
  return { ...spec, wgsl, slots, paramWords: word };
}

/** Memoises a kernel builder by its arguments (dtype and flag variants). */
// deno-lint-ignore no-explicit-any
export function memoKernel<A extends any[], K>(build: (...args: A) => K): (...args: A) => K {
  const cache = new Map<string, K>();
  return (...args: A) => {
    const key = args.join("|");
    let k = cache.get(key);
    if (k === undefined) cache.set(key, k = build(...args));
    return k;
  };
}
