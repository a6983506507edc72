"""One PyTorch training step of EfficientNet-Lite0 (batch 32, 192 px, 196 classes, AdamW), and an
eval pass, timed in whatever environment runs it: compares machines or torch versions side by side.

    python benchmarks/bench_train_step.py cl    # channels-last, as carid trains
    python benchmarks/bench_train_step.py       # contiguous (NCHW)

Prints images/s of the median of 5 training steps (after 2 warm-up steps) and of 3 eval passes, and
the time of a 2000 x 2000 float32 matmul on the configured threads. Needs only torch and timm, so it
also runs in a scratch environment with another torch version.
"""

import sys
import time

import timm
import torch


def main() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=196)
    channels_last = len(sys.argv) > 1 and sys.argv[1] == "cl"
    images = torch.randn(32, 3, 192, 192)
    labels = torch.randint(0, 196, (32,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()
    step()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    times.sort()
    model.eval()
    with torch.inference_mode():
        model(images)
        started = time.perf_counter()
        for _ in range(3):
            model(images)
        evaluation = (time.perf_counter() - started) / 3
    matrix = torch.randn(2000, 2000)
    matrix @ matrix
    started = time.perf_counter()
    for _ in range(10):
        matrix @ matrix
    matmul = (time.perf_counter() - started) / 10
    print(
        f"torch {torch.__version__} channels_last={channels_last} threads={torch.get_num_threads()}: "
        f"train {32 / times[2]:.1f} img/s, eval {32 / evaluation:.1f} img/s, matmul 2000^2 {matmul:.3f} s"
    )


if __name__ == "__main__":
    main()
