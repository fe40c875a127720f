"""Keras networks of the XRD models: the 1D CNN phase classifier and the seed's VAE novelty scorer.

Both take a (N, 2048) float32 pattern on the model grid (Cu Kα, 2θ 20-90°, min-max normalised to [0, 1],
see :mod:`matserve.codecs.xrd`).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from matserve.codecs.xrd import N_POINTS

#: Classifier trunk: (filters, kernel, stride) per Conv1D layer; measured ~27k patterns/s with ONNX Runtime
#: at batch 256 on 2 cores (three candidates compared, 8-64 filters; this is the middle one).
CNN_LAYERS: tuple[tuple[int, int, int], ...] = ((16, 8, 4), (16, 5, 2), (32, 5, 2), (32, 3, 2), (64, 3, 2))
CNN_DENSE = 64

#: The seed's VAE (seed 002 methods): encoder 2048-256-128, 2-d latent, mirrored decoder (the reference).
SEED_VAE_WIDTHS: tuple[int, ...] = (256, 128)
SEED_VAE_LATENT = 2
#: The served VAE: same family and loss, wider layers and a 16-d latent. On the wide training ranges the seed's
#: 2-d latent collapses (latent k-NN accuracy 0.35, AUROC unknown vs known 0.64): 2 numbers cannot carry the
#: structure type, two lattice parameters, texture and peak widths. The latent map is then a 2-d PCA projection.
VAE_WIDTHS: tuple[int, ...] = (512, 256)
VAE_LATENT = 16


def cnn_trunk(pattern: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """The shared 1D CNN: pattern (N, 2048) -> (N, 64) features (strided Conv1D layers, flatten, dense)."""
    x = layers.Reshape((N_POINTS, 1))(pattern)
    for filters, kernel, stride in CNN_LAYERS:
        x = layers.Conv1D(filters, kernel, strides=stride, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(CNN_DENSE, activation="relu")(x)


def phase_classifier(n_classes: int, dropout: float = 0.3) -> keras.Model:
    """A compact strided 1D CNN: pattern (N, 2048) -> class probabilities (N, n_classes), softmax.

    Strided convolutions downsample 2048 -> 64 positions while the filters keep sub-step peak positions;
    the flattened map keeps where peaks are (absolute 2θ matters for phase identity).
    """
    pattern = keras.Input((N_POINTS,), name="pattern")
    x = cnn_trunk(pattern, dropout)
    probabilities = layers.Dense(n_classes, activation="softmax", name="phase_probabilities")(x)
    return keras.Model(pattern, probabilities, name="xrd_phase_cnn")


def outlier_detector(dropout: float = 0.3) -> keras.Model:
    """The classifier's CNN with one sigmoid output: P(pattern is not a single known phase).

    Trained with outlier exposure (Hendrycks et al., 2019): known phases against binary mixtures of known
    phases and random-peak patterns; the novel structure types used in evaluation are never shown.
    """
    pattern = keras.Input((N_POINTS,), name="pattern")
    x = cnn_trunk(pattern, dropout)
    return keras.Model(pattern, layers.Dense(1, activation="sigmoid")(x), name="xrd_outlier_cnn")


def vae_encoder(widths: tuple[int, ...] = VAE_WIDTHS, latent: int = VAE_LATENT) -> keras.Model:
    """Pattern -> (latent mean, latent log-variance)."""
    pattern = keras.Input((N_POINTS,), name="pattern")
    x = pattern
    for width in widths:
        x = layers.Dense(width, activation="relu")(x)
    return keras.Model(pattern, [layers.Dense(latent, name="z_mean")(x), layers.Dense(latent, name="z_log_var")(x)])


def vae_decoder(widths: tuple[int, ...] = VAE_WIDTHS, latent: int = VAE_LATENT) -> keras.Model:
    """Latent -> reconstructed pattern in [0, 1] (sigmoid), the encoder mirrored."""
    z = keras.Input((latent,), name="z")
    x = z
    for width in reversed(widths):
        x = layers.Dense(width, activation="relu")(x)
    return keras.Model(z, layers.Dense(N_POINTS, activation="sigmoid", name="reconstruction")(x))


class VAE(keras.Model):
    """The seed's VAE: loss = 2048 × mean binary cross-entropy + KL(q(z|x) || N(0, I))."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {k: keras.metrics.Mean(name=k) for k in ("loss", "reconstruction_loss", "kl_loss")}

    @property
    def metrics(self) -> list:
        return list(self.trackers.values())

    def vae_losses(self, x: tf.Tensor, sample: bool) -> dict[str, tf.Tensor]:
        z_mean, z_log_var = self.encoder(x, training=sample)
        z = z_mean
        if sample:
            z = z_mean + tf.exp(0.5 * z_log_var) * keras.random.normal(tf.shape(z_mean), seed=self.seed_generator)
        reconstruction = self.decoder(z, training=sample)
        bce = keras.losses.binary_crossentropy(x[..., None], reconstruction[..., None])  # (N, 2048)
        reconstruction_loss = tf.reduce_mean(tf.reduce_sum(bce, axis=1))  # = 2048 × mean BCE
        kl = -0.5 * tf.reduce_mean(tf.reduce_sum(1.0 + z_log_var - z_mean**2 - tf.exp(z_log_var), axis=1))
        return {"loss": reconstruction_loss + kl, "reconstruction_loss": reconstruction_loss, "kl_loss": kl}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses = self.vae_losses(data, sample=True)
        gradients = tape.gradient(losses["loss"], self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights, strict=True))
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def test_step(self, data):
        for name, value in self.vae_losses(data, sample=False).items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def call(self, x):
        return self.decoder(self.encoder(x)[0])


def novelty_graph(encoder: keras.Model, decoder: keras.Model, detector: keras.Model | None = None) -> keras.Model:
    """The served graph: pattern -> latent mean, its reconstruction, the reconstruction error (MSE) and, with a
    ``detector``, the outlier probability.

    The deterministic path (z = latent mean, no sampling): the same pattern always gets the same score.
    """
    pattern = keras.Input((N_POINTS,), name="pattern")
    z_mean, _ = encoder(pattern)
    reconstruction = decoder(z_mean)
    error = layers.Lambda(lambda t: tf.reduce_mean(tf.square(t[0] - t[1]), axis=1), name="reconstruction_error")(
        [pattern, reconstruction]
    )
    outputs = {"latent_mean": z_mean, "reconstruction": reconstruction, "reconstruction_error": error}
    if detector is not None:
        outputs["outlier_probability"] = layers.Reshape((), name="outlier_probability")(detector(pattern))
    return keras.Model(pattern, outputs, name="xrd_novelty")
