"""Keras network and losses of the EBSD indexer (OMNet family, seed 004 chapter 6).

Input: ``patterns`` (N, 60, 60) float32 normalised by :func:`matserve.codecs.ebsd.normalize_patterns`.
Output: ``axis_map`` (N, 15, 15), the cube-axis proximity of the ray through each of 15 x 15 detector blocks,
``g = sum_i c_i^4`` for the ray's unit direction ``c`` in the crystal frame (see
:mod:`matserve.codecs.orientation`, which turns the map into an orientation for the pattern's PC by least
squares and decodes it into an orix quaternion, with the fit residual as the error estimate).

Why a map and not a rotation (measured here, 2 CPU cores): a quaternion head with the seed's symmetric loss,
and a head regressing the 15 numbers of the cubic-invariant embedding, both stayed at the 40.7 deg of a
constant guess for 2,000 steps (250k patterns). The map is dense (225 targets per pattern), local (a block's
value depends on the bands near it) and invariant under the 24 symmetry rotations, so there is no
discontinuity to learn; the geometry (PC, tilt) is then handled exactly by the least-squares step, not learnt.
The orientation representation is therefore the cubic-invariant embedding ``T = sum_i a_i^(x4)`` (linear in the
map), decoded into a unit quaternion.

Loss: the seed's hybrid, adapted: the conventional term is the map's mean squared error; the disorientation
term (over the 24 proper rotations of 432, ``2 arccos max_k |q . s_k q_true|``) is taken on the orientation
decoded from the predicted map (least squares and the decoder's power iterations are differentiable).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from matserve.codecs.ebsd import PATTERN_SIDE_PX
from matserve.codecs.orientation import (
    AXIS_MAP_SIDE,
    CIRCLE_DIRECTIONS,
    CUBIC_ROTATIONS,
    DETECTOR_TO_SAMPLE,
    EMBEDDING_INDICES,
    EMBEDDING_MULTIPLICITY,
    TRACE_WEIGHT,
    start_directions,
    trace_constraints,
)

#: Encoder: filters per strided 3x3 Conv2D + BatchNorm + ReLU on the 2x2-average-pooled 30x30 pattern
#: (30 -> 15 -> 8 -> 4 px); a dense global-context branch; decoder widths at 8 and 15 px (U-Net skips).
INPUT_POOL = 2
ENCODER_FILTERS: tuple[int, int, int] = (32, 64, 128)
GLOBAL_DENSE = 256
GLOBAL_CHANNELS = 16
DECODER_FILTERS: tuple[int, int] = (64, 32)
#: Weight of the disorientation term at the end of training; it is ramped up from 0 over the second half (at
#: first the decoded orientations are random and the term would only add noise).
DISORIENTATION_WEIGHT = 0.05


def quaternion_multiply(p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """Hamilton product ``p q`` of broadcastable ``(..., 4)`` quaternions ``(a, b, c, d)``."""
    a1, b1, c1, d1 = tf.unstack(p, axis=-1)
    a2, b2, c2, d2 = tf.unstack(q, axis=-1)
    return tf.stack(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ],
        axis=-1,
    )


def symmetry_equivalents(q_true: tf.Tensor) -> tf.Tensor:
    """The 24 crystal-symmetry equivalents ``s_k q`` of ``(N, 4)`` orientations -> ``(N, 24, 4)``."""
    symmetry = tf.constant(CUBIC_ROTATIONS, tf.float32)
    return quaternion_multiply(symmetry[None, :, :], q_true[:, None, :])


def disorientation_rad(q_true: tf.Tensor, q_pred: tf.Tensor) -> tf.Tensor:
    """Differentiable m-3m disorientation angle (radians) between ``(N, 4)`` unit quaternions.

    ``2 arccos(max_k |q_pred . s_k q_true|)`` over the 24 proper rotations of 432; the dot product is
    clipped below 1 so the gradient stays finite at zero error.
    """
    dots = tf.abs(tf.reduce_sum(symmetry_equivalents(q_true) * q_pred[:, None, :], axis=-1))
    return 2.0 * tf.acos(tf.clip_by_value(tf.reduce_max(dots, axis=1), 0.0, 1.0 - 1e-7))


def _conv(x: keras.KerasTensor, filters: int, stride: int = 1) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    return layers.ReLU()(layers.BatchNormalization()(x))


def indexer() -> keras.Model:
    """The network: a strided encoder shared by a global (dense) branch and a decoder (OMNet's shared trunk
    with branches), outputting ``axis_map`` (N, 15, 15). The PC is not an input: the map is what the
    pattern shows; the PC enters in the least-squares step."""
    patterns = keras.Input((PATTERN_SIDE_PX, PATTERN_SIDE_PX), name="patterns")
    x = layers.Reshape((PATTERN_SIDE_PX, PATTERN_SIDE_PX, 1))(patterns)
    x = layers.AveragePooling2D(INPUT_POOL)(x)  # 30 x 30
    skips = []
    for filters in ENCODER_FILTERS:  # 15, 8, 4 px
        x = _conv(x, filters, stride=2)
        skips.append(x)
    context = layers.Dense(GLOBAL_DENSE, activation="relu")(layers.Flatten()(x))
    context = layers.Dense(4 * 4 * GLOBAL_CHANNELS, activation="relu")(context)
    x = layers.Concatenate()([skips[2], layers.Reshape((4, 4, GLOBAL_CHANNELS))(context)])
    x = _conv(layers.Concatenate()([layers.UpSampling2D(2)(x), skips[1]]), DECODER_FILTERS[0])  # 8 x 8
    x = layers.Cropping2D(((0, 1), (0, 1)))(layers.UpSampling2D(2)(x))  # 15 x 15
    x = _conv(layers.Concatenate()([x, skips[0]]), DECODER_FILTERS[1])
    axis_map = layers.Reshape((AXIS_MAP_SIDE, AXIS_MAP_SIDE), name="axis_map")(layers.Conv2D(1, 1)(x))
    return keras.Model({"patterns": patterns}, {"axis_map": axis_map}, name="ebsd_axis_map_net")


def _directions_tf(pc: tf.Tensor) -> tf.Tensor:
    """TensorFlow twin of :func:`matserve.codecs.orientation.detector_directions`: ``(N, 225, 3)``."""
    centres = tf.constant((np.arange(AXIS_MAP_SIDE) + 0.5) / AXIS_MAP_SIDE, tf.float32)
    shape = (tf.shape(pc)[0], AXIS_MAP_SIDE, AXIS_MAP_SIDE)
    x = tf.broadcast_to(centres[None, None, :] - pc[:, 0, None, None], shape)
    y = tf.broadcast_to(pc[:, 1, None, None] - centres[None, :, None], shape)
    z = tf.broadcast_to(pc[:, 2, None, None], shape)
    rays = tf.reshape(tf.stack([x, y, z], axis=-1), (shape[0], -1, 3))
    return _normalise(tf.matmul(rays, tf.constant(DETECTOR_TO_SAMPLE.T, tf.float32)))


def embedding_from_map_tf(axis_map: tf.Tensor, pc: tf.Tensor) -> tf.Tensor:
    """TensorFlow twin of :func:`matserve.codecs.orientation.embedding_from_axis_map` (differentiable)."""
    design = _monomials_tf(_directions_tf(pc))  # (N, P, 15)
    values = tf.reshape(axis_map, (tf.shape(axis_map)[0], -1, 1))
    constraints, targets = (tf.constant(a, tf.float32) for a in trace_constraints())
    normal = tf.matmul(design, design, transpose_a=True)
    normal += TRACE_WEIGHT * tf.matmul(constraints, constraints, transpose_a=True)
    right = tf.matmul(design, values, transpose_a=True)
    right += TRACE_WEIGHT * tf.matmul(constraints, targets[:, None], transpose_a=True)
    return tf.linalg.solve(normal, right)[..., 0]


class IndexerTraining(keras.Model):
    """Wraps :func:`indexer` with the hybrid loss: map MSE + ``disorientation_weight`` x mean disorientation
    (radians) of the orientation decoded from the predicted map for the true PC. ``disorientation_weight`` is
    a variable that the training schedule ramps up."""

    def __init__(self, network: keras.Model) -> None:
        super().__init__()
        self.network = network
        self.disorientation_weight = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.map_tracker = keras.metrics.Mean(name="map_rmse")
        self.angle_tracker = keras.metrics.Mean(name="disorientation_deg")

    def call(self, inputs: dict, training: bool = False) -> dict:
        return self.network({"patterns": inputs["patterns"]}, training=training)

    def _loss(self, inputs: dict, targets: dict, training: bool) -> tf.Tensor:
        predicted = self.network({"patterns": inputs["patterns"]}, training=training)["axis_map"]
        map_mse = tf.reduce_mean(tf.square(predicted - targets["axis_map"]), axis=[1, 2])

        def decoded_angle() -> tf.Tensor:
            quaternion = decode_embedding(embedding_from_map_tf(predicted, inputs["pc"]))
            return disorientation_rad(targets["quaternion"], quaternion)

        # While the weight is 0 (the first half of training) the decoding is skipped: it costs as much as the net.
        skip = tf.logical_and(training, self.disorientation_weight <= 0.0)
        angle = tf.cond(skip, lambda: tf.fill(tf.shape(map_mse), np.nan), decoded_angle)
        loss = tf.reduce_mean(map_mse + self.disorientation_weight * tf.where(skip, 0.0, angle))
        self.loss_tracker.update_state(loss)
        self.map_tracker.update_state(tf.sqrt(tf.reduce_mean(map_mse)))
        if not training:
            self.angle_tracker.update_state(tf.reduce_mean(angle) * (180.0 / np.pi))
        return loss

    def train_step(self, data: tuple) -> dict:
        inputs, targets = data
        with tf.GradientTape() as tape:
            loss = self._loss(inputs, targets, training=True)
        gradients = tape.gradient(loss, self.network.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.network.trainable_variables, strict=True))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data: tuple) -> dict:
        inputs, targets = data
        self._loss(inputs, targets, training=False)
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, self.map_tracker, self.angle_tracker]


# --------------------------------------------------------------------------- differentiable decoding


def _monomials_tf(directions: tf.Tensor) -> tf.Tensor:
    """``v_j v_k v_l v_m`` per embedding index times its multiplicity: ``(..., 3) -> (..., 15)``."""
    factors = [tf.gather(directions, [index[p] for index in EMBEDDING_INDICES], axis=-1) for p in range(4)]
    return factors[0] * factors[1] * factors[2] * factors[3] * EMBEDDING_MULTIPLICITY


def _cross(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    a1, a2, a3 = tf.unstack(a, axis=-1)
    b1, b2, b3 = tf.unstack(b, axis=-1)
    return tf.stack([a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1], axis=-1)


def _normalise(v: tf.Tensor) -> tf.Tensor:
    return v / tf.norm(v, axis=-1, keepdims=True)


def decode_embedding(embedding: tf.Tensor, iterations: int = 4) -> tf.Tensor:
    """TensorFlow twin of :func:`matserve.codecs.orientation.decode_cubic_embedding` (same steps and
    constants; a test checks they agree), for the disorientation loss."""
    starts = tf.constant(start_directions(), tf.float32)
    first = tf.gather(starts, tf.argmax(tf.matmul(embedding, _monomials_tf(starts), transpose_b=True), axis=1))
    use_x = tf.abs(first[:, :1]) < 0.9
    helper = tf.where(use_x, tf.constant([[1.0, 0.0, 0.0]]), tf.constant([[0.0, 1.0, 0.0]]))
    u = _normalise(_cross(first, helper))
    w = _cross(first, u)
    angles = np.linspace(0, np.pi, CIRCLE_DIRECTIONS, endpoint=False)
    cos, sin = (
        tf.constant(np.cos(angles)[None, :, None], tf.float32),
        tf.constant(np.sin(angles)[None, :, None], tf.float32),
    )
    circle = cos * u[:, None, :] + sin * w[:, None, :]
    values = tf.reduce_sum(embedding[:, None, :] * _monomials_tf(circle), axis=-1)
    second = tf.gather(circle, tf.argmax(values, axis=1), batch_dims=1)
    frame = tf.stack([first, second, _cross(first, second)], axis=1)
    full_index = [EMBEDDING_INDICES.index(tuple(sorted(i))) for i in np.ndindex(3, 3, 3, 3)]
    tensor = tf.reshape(tf.gather(embedding, full_index, axis=1), (-1, 3, 27))  # T[j, (k, l, m)]
    for _ in range(iterations):
        outer = frame[:, :, :, None, None] * frame[:, :, None, :, None] * frame[:, :, None, None, :]
        power = tf.matmul(tf.reshape(outer, (-1, 3, 27)), tensor, transpose_b=True)  # (N, axis i, j)
        first = _normalise(power[:, 0])
        second = _normalise(power[:, 1] - tf.reduce_sum(power[:, 1] * first, axis=-1, keepdims=True) * first)
        frame = tf.stack([first, second, _cross(first, second)], axis=1)
    return _matrix_to_quaternion(frame)


def _matrix_to_quaternion(m: tf.Tensor) -> tf.Tensor:
    """TensorFlow twin of :func:`matserve.codecs.orientation.matrix_to_quaternion` (Shepperd, ``a >= 0``)."""
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = tf.stack(
        [
            tf.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            tf.stack([m[:, 2, 1] - m[:, 1, 2], 1 + 2 * m[:, 0, 0] - trace, m[:, 0, 1] + m[:, 1, 0],
                      m[:, 0, 2] + m[:, 2, 0]], -1),
            tf.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + 2 * m[:, 1, 1] - trace,
                      m[:, 1, 2] + m[:, 2, 1]], -1),
            tf.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                      1 + 2 * m[:, 2, 2] - trace], -1),
        ],
        axis=1,
    )  # fmt: skip
    best = tf.argmax(tf.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1), axis=1)
    q = _normalise(tf.gather(candidates, best, batch_dims=1))
    return q * tf.where(q[:, :1] < 0, -1.0, 1.0)
