"""PyTorch eager reference for `refine-cli bench`: the same model, data, batch size, optimizer
and thread count, each phase timed the same way (one warm-up, then the median of --repeat runs).

Prints one JSON document on stdout: {"phases": {name: {"median_s", "min_s", "max_s"}}, ...}.
Usage: python torch_reference.py --data-dir data/mnist --threads 2 --repeat 3
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared import read_all, timed


def load(data_dir: Path):
    arrays = read_all(data_dir)
    to_images = lambda a: torch.from_numpy(a.copy()).float().div_(255.0).unsqueeze(1)
    to_labels = lambda a: torch.from_numpy(a.astype(np.int64))
    return to_images(arrays[0]), to_labels(arrays[1]), to_images(arrays[2]), to_labels(arrays[3])


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.representation = nn.Linear(64 * 7 * 7, 256)
        self.classifier = nn.Linear(256, 10)

    def features(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return F.relu(self.representation(x))

    def forward(self, x):
        return F.log_softmax(self.classifier(self.features(x)), -1)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(256, 64)
        self.final = nn.Linear(64, 10)

    def forward(self, x):
        return F.log_softmax(self.final(F.relu(self.hidden(x))), -1)


def epoch(model, inputs, labels, lr, batch, frozen=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.randperm(inputs.shape[0])
    for start in range(0, inputs.shape[0] - batch + 1, batch):
        index = order[start : start + batch]
        x = inputs[index]
        if frozen is not None:
            with torch.no_grad():
                x = frozen.features(x)
        loss = F.nll_loss(model(x), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data/mnist"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    phases = {"load": timed(lambda: load(args.data_dir), args.repeat)}
    train_x, train_y, test_x, test_y = load(args.data_dir)
    all_x = torch.cat([train_x, test_x])
    base = Base().eval()
    for p in base.parameters():
        p.requires_grad_(False)

    def extract():
        with torch.no_grad():
            return torch.cat([base.features(all_x[i : i + 128]) for i in range(0, all_x.shape[0], 128)])

    phases["extract"] = timed(extract, args.repeat)
    features = extract()
    train_f, test_f = features[: train_x.shape[0]], features[train_x.shape[0] :]
    phases["refine_epoch_cached"] = timed(lambda: epoch(Head(), train_f, train_y, 0.1, args.batch_size), args.repeat)
    phases["refine_epoch_naive"] = timed(lambda: epoch(Head(), train_x, train_y, 0.1, args.batch_size, frozen=base), args.repeat)
    phases["pretrain_epoch"] = timed(lambda: epoch(Base(), train_x, train_y, 0.1, args.batch_size), args.repeat)
    head = Head()

    def evaluate():
        with torch.no_grad():
            for i in range(0, test_x.shape[0], 128):
                head(base.features(test_x[i : i + 128])).argmax(-1)

    phases["eval"] = timed(evaluate, args.repeat)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "phases": phases}))


if __name__ == "__main__":
    main()
