/**
 * Matmul throughput: square sizes and Qwen2.5-0.5B shapes (hidden 896,
 * MLP 4864, vocab 151936) for 512 tokens. Each iteration queues `reps`
 * matmuls and waits once, so the ~11 ms readback floor is amortised.
 */
import { matmul } from "../engine/ops/matmul.ts";
import { Tensor } from "../engine/tensor.ts";
import { dev, timed } from "./_util.ts";

function bench(
  name: string,
  M: number,
  K: number,
  N: number,
  reps: number,
  transB = false,
  n?: number,
) {
  Deno.bench({
    name,
    group: "matmul",
    n,
    warmup: n === undefined ? undefined : 1,
    async fn(b) {
      const a = Tensor.randn([M, K], { seed: 1 });
      const w = Tensor.randn(transB ? [N, K] : [K, N], { seed: 2 });
      await dev.sync();
      b.start();
      await timed(name, 2 * M * N * K * reps, "GFLOP/s", async () => {
        for (let i = 0; i < reps; i++) matmul(a, w, { transB }).dispose();
        await dev.sync();
      });
      b.end();
      a.dispose();
      w.dispose();
    },
  });
}

bench("matmul 256^3", 256, 256, 256, 8);
bench("matmul 512^3", 512, 512, 512, 2);
bench("matmul 1024^3", 1024, 1024, 1024, 1, false, 3);
// Qwen2.5-0.5B linear layers for 512 tokens; x·Wᵀ is how the model stores them.
bench("qwen0.5b (512x896)·(896x4864) up/gate", 512, 896, 4864, 1, false, 2);
bench("qwen0.5b (512x4864)·(4864x896) down", 512, 4864, 896, 1, false, 2);
bench("qwen0.5b (512x896)·(4864x896)ᵀ up/gate, x·Wᵀ", 512, 896, 4864, 1, true, 2);
// The tied lm_head (151936 x 896 f32 = 545 MB) exceeds the 128 MiB binding limit,
// so it is computed in 8 vocabulary chunks of 18992 rows: one iteration is the whole head.
bench("qwen0.5b (512x896)·(896x151936)ᵀ lm_head, 8 chunks", 512, 896, 18992, 8, true, 1);
