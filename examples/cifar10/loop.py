"""The custom training loop for `MultiWorkerMirroredStrategy`.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras issue 20585), so multi-worker runs train with
`strategy.run` over a distributed dataset, `tf.GradientTape` and
`optimizer.apply`, and drive the same callbacks as `fit` does (backup,
epoch log, best model, TensorBoard), so that both paths write the same
outputs. Only the chief writes; every worker restores from the chief's backup.
"""

from __future__ import annotations

import time

import keras

from cifar10 import callbacks as cbs


def train(
    model,
    strategy,
    train_dataset_fn,
    test_dataset,
    *,
    epochs,
    steps_per_epoch,
    global_batch,
    callback_list,
    out_dir,
    is_chief,
    verbose=1,
):
    """Train `model` (compiled for its optimizer) for `epochs` epochs,
    starting after the epochs that the backup in `out_dir` holds."""
    import tensorflow as tf

    optimizer = model.optimizer
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    replicas = strategy.num_replicas_in_sync
    dataset = strategy.distribute_datasets_from_function(train_dataset_fn)

    with strategy.scope():
        optimizer.build(model.trainable_variables)

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            data_loss = tf.reduce_sum(loss_fn(labels, logits)) / global_batch
            total = data_loss
            if model.losses:
                total = total + tf.add_n(model.losses) / replicas
            scaled = optimizer.scale_loss(total)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32)
        )
        return data_loss, correct

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        loss, correct = strategy.run(step_fn, args=(images, labels))
        reduce = tf.distribute.ReduceOp.SUM
        return strategy.reduce(reduce, loss, axis=None), strategy.reduce(reduce, correct, axis=None)

    @tf.function
    def predict_step(images):
        return model(images, training=False)

    with strategy.scope():
        callback_list.on_train_begin()
    start = cbs.backed_up_epochs(out_dir)
    iterator = iter(dataset)  # endless: every worker takes steps_per_epoch per epoch
    for epoch in range(start, epochs):
        callback_list.on_epoch_begin(epoch)
        progress = (
            keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy"])
            if is_chief and verbose == 1
            else None
        )
        loss_sum = correct_sum = 0.0
        for step in range(steps_per_epoch):
            loss, correct = train_step(iterator)
            loss_sum += float(loss)
            correct_sum += float(correct)
            callback_list.on_train_batch_end(step)
            if progress is not None:
                progress.update(
                    step + 1,
                    [
                        ("loss", loss_sum / (step + 1)),
                        ("accuracy", correct_sum / ((step + 1) * global_batch)),
                    ],
                )
        logs = {
            "loss": loss_sum / steps_per_epoch,
            "accuracy": correct_sum / (steps_per_epoch * global_batch),
        }
        callback_list.on_test_begin()
        if is_chief:
            # Inference reads the moving statistics: no collective, so only
            # the chief evaluates; the other workers wait in the next step.
            test_started = time.perf_counter()
            total = test_loss = test_correct = 0.0
            for images, labels in test_dataset:
                logits = predict_step(images)
                test_loss += float(tf.reduce_sum(loss_fn(labels, logits)))
                test_correct += float(
                    tf.reduce_sum(
                        tf.cast(
                            tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels),
                            tf.float32,
                        )
                    )
                )
                total += float(tf.shape(labels)[0])
            logs["val_loss"] = test_loss / total
            logs["val_accuracy"] = test_correct / total
            logs["val_seconds"] = time.perf_counter() - test_started
        callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end()
