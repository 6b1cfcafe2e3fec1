/// <reference lib="dom" />
/**
 * The playground page (web/index.html): the demo model in the browser's
 * WebGPU. Generation streamed token by token, each token coloured by the
 * entropy of its distribution, EM-INF and adaptive temperature switchable;
 * a short EM-FT run with its loss and entropy drawn live (Vega-Lite) and the
 * greedy accuracy on held-out problems before and after.
 * @module
 */
import {
  accumulateGradients,
  AdamW,
  adaptiveTemperatureProcessor,
  type CausalLM,
  clipGradNorm,
  device,
  emFtObjective,
  emInfProcessor,
  generate,
  type GenerateOptions,
  initDevice,
  loadModelFromUrl,
  packSequences,
  scoredBatch,
} from "./engine.ts";
import { decodeDemo, DEMO_EOS, DEMO_VOCAB, heldOutProblems, ProblemStream } from "../demo/task.ts";
import { lineChart, type Point } from "../report/specs.ts";
import { parse, View } from "vega";
import { compile } from "vega-lite";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = (text: string) => $("status").textContent = text;

/** What a test (or a curious user) reads back: window.playground. */
interface PlaygroundState {
  ready: boolean;
  adapter: string;
  lastIds: number[];
  lastEntropies: number[];
  training: { step: number; loss: number; entropy: number }[];
  accuracy: { before: number | null; after: number | null };
  error: string | null;
}
const state: PlaygroundState = {
  ready: false,
  adapter: "",
  lastIds: [],
  lastEntropies: [],
  training: [],
  accuracy: { before: null, after: null },
  error: null,
};
(globalThis as unknown as { playground: PlaygroundState }).playground = state;

let model: CausalLM;

/** A colour from green (certain) to red (entropy ln 15 and more, the demo vocabulary's maximum). */
function entropyColour(h: number): string {
  const t = Math.max(0, Math.min(1, h / Math.log(15)));
  return `hsl(${Math.round(120 * (1 - t))}, 70%, 82%)`;
}

function options(): GenerateOptions {
  const greedy = $<HTMLInputElement>("greedy").checked;
  const o: GenerateOptions = {
    maxNewTokens: Number($<HTMLInputElement>("max-new").value),
    seed: Number($<HTMLInputElement>("seed").value),
    returnEntropies: true,
  };
  if (greedy) o.greedy = true;
  else o.temperature = Number($<HTMLInputElement>("temperature").value);
  if ($<HTMLInputElement>("em-inf").checked) o.logitsProcessor = emInfProcessor();
  else if ($<HTMLInputElement>("adaptive").checked) {
    o.logitsProcessor = adaptiveTemperatureProcessor();
  }
  return o;
}

async function runGenerate(): Promise<void> {
  const tok = model.tokenizer!;
  const prompt = $<HTMLInputElement>("prompt").value;
  const out = $("output");
  out.textContent = "";
  out.dataset.done = "false";
  const t0 = performance.now();
  const r = await generate(model, [tok.encode(prompt)], {
    ...options(),
    // ids and their entropies arrive together, a few steps at a time (run-ahead decoding)
    onStep: ([id], _step, entropies) => {
      if (id < 0) return;
      const s = document.createElement("span");
      s.className = "token";
      s.textContent = id === DEMO_EOS ? "⏎" : tok.decode([id]);
      const h = entropies![0];
      s.style.background = entropyColour(h);
      s.title = `entropy ${h.toFixed(3)} nats`;
      out.append(s);
    },
  });
  const entropies = r.entropies![0];
  state.lastIds = r.tokens[0];
  state.lastEntropies = entropies;
  out.dataset.done = "true";
  status(`${r.tokens[0].length} tokens in ${(performance.now() - t0).toFixed(0)} ms`);
}

/** Greedy accuracy on the first `n` held-out problems. */
async function heldOutAccuracy(n: number): Promise<number> {
  const tok = model.tokenizer!;
  const problems = heldOutProblems(500).slice(0, n);
  const r = await generate(model, problems.map((p) => tok.encode(p.prompt)), {
    greedy: true,
    maxNewTokens: 5,
  });
  return r.tokens.filter((t, i) => t.at(-1) === DEMO_EOS && decodeDemo(t) === problems[i].answer)
    .length / n;
}

async function drawTraining(): Promise<void> {
  const points: Point[] = state.training.map((s) => ({
    x: s.step,
    y: s.entropy,
    series: "mean token entropy",
  }));
  const spec = lineChart({ title: "EM-FT in this page", xTitle: "step", yTitle: "nats", points });
  const view = new View(parse(compile(spec as never).spec), {
    renderer: "svg",
    container: "#chart",
  });
  await view.runAsync();
}

async function runTraining(): Promise<void> {
  const steps = Number($<HTMLInputElement>("train-steps").value);
  const batchSize = 16;
  const nSamples = 2;
  const tok = model.tokenizer!;
  const held = heldOutProblems(500);
  const stream = new ProblemStream(1, held);
  $("train").dataset.done = "false";
  status("greedy accuracy before…");
  state.accuracy.before = await heldOutAccuracy(50);
  $("acc-before").textContent = `${(100 * state.accuracy.before).toFixed(0)}%`;
  const params = model.tensors();
  params.forEach((p) => p.requiresGrad = true);
  const opt = new AdamW(params, { lr: Number($<HTMLInputElement>("lr").value), weightDecay: 0 });
  const objective = emFtObjective({ nSamples, reduce: "mean" });
  try {
    for (let step = 1; step <= steps; step++) {
      status(`EM-FT step ${step}/${steps}…`);
      const prompts = Array.from({ length: batchSize }, () => tok.encode(stream.next().prompt))
        .flatMap((p) => Array.from({ length: nSamples }, () => p));
      const rollouts = await generate(model, prompts, {
        temperature: 1,
        maxNewTokens: 5,
        seed: step,
      });
      const batch = scoredBatch(packSequences(prompts, rollouts.tokens, DEMO_EOS));
      opt.zeroGrad();
      const acc = accumulateGradients(model, batch, objective, 64);
      const norm = clipGradNorm(params, 1);
      const [loss, entropySum] = await Promise.all([acc.loss.item(), acc.stats.entropy.item()]);
      [norm, acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
      opt.update();
      state.training.push({ step, loss, entropy: entropySum / acc.count });
      await drawTraining();
    }
  } finally {
    opt.zeroGrad();
    opt.dispose();
    params.forEach((p) => p.requiresGrad = false);
  }
  status("greedy accuracy after…");
  state.accuracy.after = await heldOutAccuracy(50);
  $("acc-after").textContent = `${(100 * state.accuracy.after).toFixed(0)}%`;
  $("train").dataset.done = "true";
  status(`EM-FT: ${steps} steps done`);
}

async function main(): Promise<void> {
  try {
    await initDevice();
    state.adapter = device().info.description;
    $("adapter").textContent = state.adapter;
    status("loading the model…");
    const files = await (await fetch("./model/files.json")).json();
    model = await loadModelFromUrl(new URL("./model/", location.href), { files });
    $<HTMLButtonElement>("generate").onclick = () => guard(runGenerate);
    // the EM-FT run and its accuracy are the demo task's (its 15-character vocabulary)
    if (model.config.vocabSize === DEMO_VOCAB) {
      $<HTMLButtonElement>("train-button").onclick = () => guard(runTraining);
    } else {
      $<HTMLButtonElement>("train-button").disabled = true;
      $("train").append(" (the demo task's: this model only generates here)");
    }
    $<HTMLInputElement>("temperature").oninput = (e) =>
      $("temperature-value").textContent = (e.target as HTMLInputElement).value;
    state.ready = true;
    status("ready");
  } catch (e) {
    fail(e);
  }
}

function fail(e: unknown): void {
  state.error = String((e as Error)?.stack ?? e);
  status(`error: ${(e as Error)?.message ?? e}`);
  console.error(e);
}

async function guard(f: () => Promise<void>): Promise<void> {
  const buttons = document.querySelectorAll("button");
  buttons.forEach((b) => b.disabled = true);
  try {
    await f();
  } catch (e) {
    fail(e);
  } finally {
    buttons.forEach((b) => b.disabled = false);
  }
}

main();
