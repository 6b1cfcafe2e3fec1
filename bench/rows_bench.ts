/** Row kernels over a Qwen-sized vocabulary: fused entropy (fwd, bwd) and softmax, in GB/s of logits read. */
import { entropy, softmax } from "../engine/ops/softmax.ts";
import { Tensor } from "../engine/tensor.ts";
import { tidy } from "../engine/scope.ts";
import { dev, timed } from "./_util.ts";

const ROWS = 64;
const V = 151936;
const bytes = ROWS * V * 4;

function bench(name: string, body: (z: Tensor) => void, passes: number) {
  Deno.bench({
    name,
    group: "rows",
    n: 3,
    warmup: 1,
    async fn(b) {
      const z = Tensor.randn([ROWS, V], { seed: 3, requiresGrad: true });
      await dev.sync();
      b.start();
      await timed(name, bytes * passes, "GB/s", async () => {
        tidy(() => body(z));
        await dev.sync();
      });
      b.end();
      z.grad?.dispose();
      z.dispose();
    },
  });
}

bench(`entropy forward (${ROWS}x${V})`, (z) => void entropy(z), 1);
bench(`entropy forward+backward (${ROWS}x${V})`, (z) => {
  entropy(z).backward(Tensor.ones([ROWS]));
  z.grad?.dispose();
  z.grad = null;
}, 3);
bench(`softmax (${ROWS}x${V})`, (z) => void softmax(z), 2);
