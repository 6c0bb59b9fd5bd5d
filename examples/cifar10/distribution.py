"""Where a run trains: its devices, and the strategy that spreads it over them.

TensorFlow: one device, `MirroredStrategy` over the GPUs (or over logical
CPUs, `--cpu-replicas`), or `MultiWorkerMirroredStrategy` from `TF_CONFIG`.
JAX: `keras.distribution.DataParallel` over the devices. docs/reproducing.md
("Distribution") and docs/distributed.md say how each behaves.
"""

from __future__ import annotations

import contextlib
import os
import sys

from cifar10.settings import ConfigError


class Distribution:
    """What `train.run` needs to know about where the model trains."""

    def __init__(self, kind, replicas, scope, strategy=None, is_chief=True, devices=()):
        self.kind = kind
        self.replicas = replicas
        self.scope = scope
        self.strategy = strategy
        self.is_chief = is_chief
        self.devices = list(devices)


def configure_devices(config):
    """Before Keras is imported: XLA host devices for JAX; logical CPUs for
    TensorFlow (before TensorFlow initializes its devices)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if config["strategy"] == "multiworker" and backend == "tensorflow":
        import tensorflow as tf

        # Collective ops must be configured before TensorFlow's context starts.
        _cached(("multiworker",), tf.distribute.MultiWorkerMirroredStrategy)
    replicas = config["cpu_replicas"]
    if not replicas or replicas == 1:
        return
    if "jax" not in sys.modules:
        flag = f"--xla_force_host_platform_device_count={replicas}"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    if backend == "tensorflow":
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas
            )
        except RuntimeError:
            pass  # already initialized (in-process use): checked in make_distribution


def make_distribution(config, strategy=None):
    """The Distribution of `config`, or of `strategy` (a tf.distribute
    strategy made by the caller) where one is given."""
    import keras

    if keras.backend.backend() == "jax":
        return _jax_distribution(config, strategy)
    return _tf_distribution(strategy or _tf_strategy(config))


# ------------------------------------------------------------------- JAX
def _jax_distribution(config, strategy):
    import jax
    import keras

    if strategy is not None:
        raise ConfigError("a tf.distribute strategy cannot run on the JAX backend")
    if config["strategy"] == "multiworker":
        raise ConfigError(
            "--strategy multiworker needs the TensorFlow backend "
            "(on JAX, run one process per host with jax.distributed instead)"
        )
    devices = jax.devices()
    want = config["cpu_replicas"] or 1
    if devices[0].platform == "cpu":
        if len(devices) < want:
            raise ConfigError(
                f"--cpu-replicas {want}: JAX already started with {len(devices)} "
                "CPU device(s); set it before JAX is imported"
            )
        devices = devices[:want]
    if config["strategy"] == "one" or len(devices) == 1:
        return Distribution("jax-one-device", 1, contextlib.nullcontext, devices=[str(devices[0])])
    parallel = keras.distribution.DataParallel(devices=devices)
    return Distribution(
        "jax-data-parallel",
        len(devices),
        parallel.scope,
        strategy=parallel,
        devices=[str(d) for d in devices],
    )


# ------------------------------------------------------------ TensorFlow
_STRATEGIES = {}  # one per device set and process: TF collectives cannot share a process


def _cached(key, factory):
    if key not in _STRATEGIES:
        _STRATEGIES[key] = factory()
    return _STRATEGIES[key]


def _tf_strategy(config):
    import tensorflow as tf

    kind = config["strategy"]
    if kind == "multiworker":
        return _cached(("multiworker",), tf.distribute.MultiWorkerMirroredStrategy)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    want = config["cpu_replicas"] or 1
    if want > 1 and len(cpus) < want:
        raise ConfigError(
            f"--cpu-replicas {want}: TensorFlow already started with {len(cpus)} "
            "logical CPU(s); set it before TensorFlow initializes"
        )
    devices = tuple(gpus) if gpus else tuple(cpus[:want])
    if kind == "one" or (kind == "auto" and len(devices) == 1):
        device = devices[0]
        return _cached(("one", device), lambda: tf.distribute.OneDeviceStrategy(device))
    return _cached(("mirrored",) + devices, lambda: tf.distribute.MirroredStrategy(list(devices)))


def _tf_distribution(strategy):
    import tensorflow as tf

    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy
    return Distribution(
        name,
        strategy.num_replicas_in_sync,
        strategy.scope,
        strategy=strategy,
        is_chief=_is_chief(strategy),
        devices=list(getattr(strategy.extended, "worker_devices", ())),
    )


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0
