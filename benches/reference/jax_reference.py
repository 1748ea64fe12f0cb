"""JAX reference for `refine-cli bench`: the same model, data, batch size and optimizer (SGD,
momentum 0.9), each phase timed the same way (one warm-up, then the median of --repeat runs).

Compilation is excluded by the warm-up. The frozen forward is one jitted program mapping over
batches (`lax.map`); a head epoch is one jitted `lax.scan` over its steps, so no Python runs between
steps. Pretraining jits one step and loops in Python (the usual JAX idiom): inside a scan, XLA's
CPU backend runs the convolutions' gradients far slower here (282 s per epoch against 19 s).
Layout is NHWC, XLA's native one on the CPU. XLA sizes its thread
pools by the cores it may use, so --threads N pins the process to N cores before XLA starts.

Prints one JSON document on stdout: {"phases": {name: {"median_s", "min_s", "max_s"}}, ...}.
Usage: python jax_reference.py --data-dir data/mnist --threads 2 --repeat 3
"""

import argparse
import json
import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from shared import read_all, timed

EXTRACT_BATCH = 250  # divides 60,000, 10,000 and 70,000, so every mapped batch has one shape


def load(data_dir: Path):
    arrays = read_all(data_dir)
    to_images = lambda a: jnp.asarray(a, dtype=jnp.float32)[..., None] / 255.0
    to_labels = lambda a: jnp.asarray(a, dtype=jnp.int32)
    out = to_images(arrays[0]), to_labels(arrays[1]), to_images(arrays[2]), to_labels(arrays[3])
    return jax.block_until_ready(out)


def lecun(key, shape, fan_in):
    return jax.random.normal(key, shape, jnp.float32) / jnp.sqrt(fan_in)


def init_base(key):
    k = jax.random.split(key, 4)
    return {
        "conv1": (lecun(k[0], (3, 3, 1, 32), 9), jnp.zeros(32)),
        "conv2": (lecun(k[1], (3, 3, 32, 64), 288), jnp.zeros(64)),
        "representation": (lecun(k[2], (3136, 256), 3136), jnp.zeros(256)),
        "classifier": (lecun(k[3], (256, 10), 256), jnp.zeros(10)),
    }


def init_head(key):
    k = jax.random.split(key, 2)
    return {"hidden": (lecun(k[0], (256, 64), 256), jnp.zeros(64)), "final": (lecun(k[1], (64, 10), 64), jnp.zeros(10))}


def conv_relu_pool(x, weight, bias):
    y = lax.conv_general_dilated(x, weight, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + bias)
    n, h, w, c = y.shape
    return y.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def features(base, x):
    x = conv_relu_pool(x, *base["conv1"])
    x = conv_relu_pool(x, *base["conv2"]).reshape(x.shape[0], -1)
    weight, bias = base["representation"]
    return jax.nn.relu(x @ weight + bias)


def base_log_probs(base, x):
    weight, bias = base["classifier"]
    return jax.nn.log_softmax(features(base, x) @ weight + bias)


def head_log_probs(head, r):
    (w1, b1), (w2, b2) = head["hidden"], head["final"]
    return jax.nn.log_softmax(jax.nn.relu(r @ w1 + b1) @ w2 + b2)


def nll(log_probs, labels):
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


@jax.jit
def extract(base, images):
    batches = images.reshape(-1, EXTRACT_BATCH, *images.shape[1:])
    return lax.map(partial(features, base), batches).reshape(images.shape[0], -1)


@jax.jit
def evaluate(base, head, images):
    batches = images.reshape(-1, EXTRACT_BATCH, *images.shape[1:])
    return lax.map(lambda x: head_log_probs(head, features(base, x)).argmax(-1), batches)


def sgd_step(loss_of, carry, inputs, labels, lr=0.1, momentum=0.9):
    params, velocity = carry
    grads = jax.grad(loss_of)(params, inputs, labels)
    velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
    return params, velocity


def batches(order, count, batch):
    steps = count // batch
    return order[: steps * batch].reshape(steps, batch)


@partial(jax.jit, static_argnames=("loss_of", "batch"))
def scanned_epoch(params, inputs, labels, order, loss_of, batch):
    step = lambda carry, index: (sgd_step(loss_of, carry, inputs[index], labels[index]), None)
    velocity = jax.tree.map(jnp.zeros_like, params)
    (params, _), _ = lax.scan(step, (params, velocity), batches(order, inputs.shape[0], batch))
    return params


@partial(jax.jit, static_argnames=("loss_of",))
def jitted_step(carry, inputs, labels, loss_of):
    return sgd_step(loss_of, carry, inputs, labels)


def stepwise_epoch(params, inputs, labels, order, loss_of, batch):
    carry = (params, jax.tree.map(jnp.zeros_like, params))
    for index in batches(order, inputs.shape[0], batch):
        carry = jitted_step(carry, inputs[index], labels[index], loss_of=loss_of)
    return carry[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data/mnist"))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    batch = args.batch_size
    key = jax.random.PRNGKey(0)

    phases = {"load": timed(lambda: load(args.data_dir), args.repeat)}
    train_x, train_y, test_x, test_y = load(args.data_dir)
    all_x = jnp.concatenate([train_x, test_x])
    base, head = init_base(key), init_head(key)
    phases["extract"] = timed(lambda: extract(base, all_x).block_until_ready(), args.repeat)
    train_f = extract(base, train_x)
    order = jax.random.permutation(key, train_x.shape[0])

    head_loss = lambda head, r, y: nll(head_log_probs(head, r), y)
    naive_loss = lambda head, x, y: head_loss(head, lax.stop_gradient(features(base, x)), y)
    base_loss = lambda base, x, y: nll(base_log_probs(base, x), y)
    run = lambda epoch, params, inputs, loss_of: jax.block_until_ready(
        epoch(params, inputs, train_y, order, loss_of=loss_of, batch=batch)
    )
    phases["refine_epoch_cached"] = timed(lambda: run(scanned_epoch, head, train_f, head_loss), args.repeat)
    phases["refine_epoch_naive"] = timed(lambda: run(scanned_epoch, head, train_x, naive_loss), args.repeat)
    phases["pretrain_epoch"] = timed(lambda: run(stepwise_epoch, base, train_x, base_loss), args.repeat)
    phases["eval"] = timed(lambda: evaluate(base, head, test_x).block_until_ready(), args.repeat)
    threads = len(os.sched_getaffinity(0))
    print(json.dumps({"jax": jax.__version__, "threads": threads, "phases": phases}))


if __name__ == "__main__":
    main()
