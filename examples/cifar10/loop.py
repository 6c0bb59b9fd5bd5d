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

from cifar10.outputs import backed_up_epochs


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
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    dataset = strategy.distribute_datasets_from_function(train_dataset_fn)
    train_step, predict_step = _step_functions(model, strategy, loss_fn, global_batch)
    with strategy.scope():
        callback_list.on_train_begin()
    iterator = iter(dataset)
    for epoch in range(backed_up_epochs(out_dir), epochs):
        callback_list.on_epoch_begin(epoch)
        progress = None
        if is_chief and verbose == 1:
            progress = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy"])
        logs = _train_epoch(
            train_step, iterator, steps_per_epoch, global_batch, callback_list, progress
        )
        callback_list.on_test_begin()
        if is_chief:
            # Inference reads the moving statistics: no collective, so only
            # the chief evaluates; the other workers wait in the next step.
            logs.update(_evaluate(predict_step, loss_fn, test_dataset))
        callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end()


def _correct(labels, logits):
    import tensorflow as tf

    predicted = tf.argmax(logits, -1, output_type=labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))


def _step_functions(model, strategy, loss_fn, global_batch):
    """`(train_step(iterator) -> (loss, correct) summed over replicas,
    predict_step(images) -> logits)`, as `tf.function`s."""
    import tensorflow as tf

    optimizer = model.optimizer
    replicas = strategy.num_replicas_in_sync
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
        return data_loss, _correct(labels, logits)

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        loss, correct = strategy.run(step_fn, args=(images, labels))
        reduce = tf.distribute.ReduceOp.SUM
        return strategy.reduce(reduce, loss, axis=None), strategy.reduce(reduce, correct, axis=None)

    @tf.function
    def predict_step(images):
        return model(images, training=False)

    return train_step, predict_step


def _train_epoch(train_step, iterator, steps, global_batch, callback_list, progress):
    """One epoch's `steps` steps (the iterator is endless: every worker takes
    the same number); its mean loss and accuracy."""
    loss_sum = correct_sum = 0.0
    for step in range(steps):
        loss, correct = train_step(iterator)
        loss_sum += float(loss)
        correct_sum += float(correct)
        callback_list.on_train_batch_end(step)
        if progress is not None:
            seen = step + 1
            progress.update(
                seen,
                [("loss", loss_sum / seen), ("accuracy", correct_sum / (seen * global_batch))],
            )
    return {"loss": loss_sum / steps, "accuracy": correct_sum / (steps * global_batch)}


def _evaluate(predict_step, loss_fn, test_dataset):
    import tensorflow as tf

    started = time.perf_counter()
    total = loss = correct = 0.0
    for images, labels in test_dataset:
        logits = predict_step(images)
        loss += float(tf.reduce_sum(loss_fn(labels, logits)))
        correct += float(_correct(labels, logits))
        total += float(tf.shape(labels)[0])
    return {
        "val_loss": loss / total,
        "val_accuracy": correct / total,
        "val_seconds": time.perf_counter() - started,
    }
