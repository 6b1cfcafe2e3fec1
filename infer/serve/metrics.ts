/**
 * The server's metrics in Prometheus' text format (GET /metrics): counters,
 * gauges and histograms, with vLLM-like names under the `em_` prefix.
 * @module
 */

/** Latency buckets in seconds (time to first token, time per output token). */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

class Histogram {
  readonly counts: number[] = new Array(BUCKETS.length).fill(0);
  sum = 0;
  count = 0;
  observe(v: number): void {
    BUCKETS.forEach((b, i) => v <= b && this.counts[i]++);
    this.sum += v;
    this.count++;
  }
}

export class Metrics {
  /** Requests by HTTP status. */
  readonly requests: Map<number, number> = new Map();
  /** Completion requests by the model (base or adapter) they asked for. */
  readonly byModel: Map<string, number> = new Map();
  /** Full weight reloads (/update_weights_from_disk). */
  weightUpdates = 0;
  promptTokens = 0;
  generationTokens = 0;
  readonly ttft = new Histogram();
  readonly tpot = new Histogram();

  countRequest(status: number): void {
    this.requests.set(status, (this.requests.get(status) ?? 0) + 1);
  }

  /** The exposition text; `gauges` are read at the time of the scrape. */
  render(
    gauges: {
      running: number;
      waiting: number;
      batch: number;
      kvCacheBytes: number;
      gpuLiveBytes: number;
    },
  ): string {
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string) =>
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    metric("em_requests_total", "counter", "Requests answered, by HTTP status.");
    for (const [status, n] of [...this.requests].sort()) {
      lines.push(`em_requests_total{status="${status}"} ${n}`);
    }
    metric("em_model_requests_total", "counter", "Completion requests, by model or adapter.");
    for (const [model, n] of [...this.byModel].sort()) {
      lines.push(`em_model_requests_total{model=${JSON.stringify(model)}} ${n}`);
    }
    metric("em_weight_updates_total", "counter", "Weights reloaded from disk.");
    lines.push(`em_weight_updates_total ${this.weightUpdates}`);
    metric("em_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
    lines.push(`em_prompt_tokens_total ${this.promptTokens}`);
    metric("em_generation_tokens_total", "counter", "Tokens generated.");
    lines.push(`em_generation_tokens_total ${this.generationTokens}`);
    metric("em_num_requests_running", "gauge", "Sequences decoding now.");
    lines.push(`em_num_requests_running ${gauges.running}`);
    metric("em_num_requests_waiting", "gauge", "Sequences waiting for a slot.");
    lines.push(`em_num_requests_waiting ${gauges.waiting}`);
    metric("em_batch_size", "gauge", "Sequences in the last decoding step.");
    lines.push(`em_batch_size ${gauges.batch}`);
    metric("em_kv_cache_bytes", "gauge", "GPU bytes of the KV cache.");
    lines.push(`em_kv_cache_bytes ${gauges.kvCacheBytes}`);
    metric(
      "em_gpu_live_bytes",
      "gauge",
      "GPU bytes of every tensor alive (weights, cache, in flight).",
    );
    lines.push(`em_gpu_live_bytes ${gauges.gpuLiveBytes}`);
    for (
      const [name, h, help] of [
        ["em_time_to_first_token_seconds", this.ttft, "Time from arrival to the first token."],
        ["em_time_per_output_token_seconds", this.tpot, "Time between two tokens of a sequence."],
      ] as const
    ) {
      metric(name, "histogram", help);
      BUCKETS.forEach((b, i) => lines.push(`${name}_bucket{le="${b}"} ${h.counts[i]}`));
      lines.push(`${name}_bucket{le="+Inf"} ${h.count}`);
      lines.push(`${name}_sum ${h.sum}`, `${name}_count ${h.count}`);
    }
    return lines.join("\n") + "\n";
  }
}
