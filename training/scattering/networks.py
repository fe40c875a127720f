"""Keras networks of the scattering sorter: the seed's LeNet and the served global-pooling CNN.

Both take the codec's ``(N, 128, 128, 2)`` float32 input (normalised log intensity, block valid fraction; see
:mod:`matserve.codecs.scattering`); the served network with ``with_setup=True`` (version 1.2.0 on) also takes
``setup`` ``(N, 2)``, the codec's :func:`~matserve.codecs.scattering.setup_features` (log10 of the detector's
q span and a flag that it is known; zeros when the distance, wavelength or pixel size is missing). All answer
three heads:

* ``technique_probabilities`` ``(N, 4)``, softmax over :data:`TECHNIQUES`;
* ``geometry_probabilities`` ``(N, 2)``, softmax over :data:`GEOMETRIES`;
* ``feature_probabilities`` ``(N, 5)``, independent sigmoids over :data:`FEATURES` (multi-label).

The served network also answers ``class_activation_maps`` ``(N, 16, 16, 11)``: for every label (techniques,
then geometries, then features) the Grad-CAM map ``sum_k alpha_k A_k`` of its last convolution ``A``. Its heads
are linear in the global average of ``A``, so the Grad-CAM weights ``alpha_k = d score / d mean(A_k)`` are
exactly the head's dense weights: the map is computed in the graph, and ONNX Runtime serves it without gradients.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from matserve.codecs.scattering import INPUT_SIDE_PX, N_CHANNELS, SETUP_FEATURES
from training.scattering.labels import FEATURES, GEOMETRIES, TECHNIQUES

OUTPUTS = ("technique_probabilities", "geometry_probabilities", "feature_probabilities")
CAM_OUTPUT = "class_activation_maps"

#: The seed's LeNet (seed 003, III-A-a): three 3x3 convolutions of 64, 64, 48 filters, each followed by 2x2
#: max-pooling and batch normalisation, then dense 192 and 64 with 50 % dropout between them.
LENET_FILTERS = (64, 64, 48)
LENET_DENSE = (192, 64)
#: The served CNN: (filters, stride, dilation) per 3x3 convolution after a 5x5 stride-2 stem of 16 filters.
SORTER_STEM = 16
SORTER_LAYERS: tuple[tuple[int, int, int], ...] = ((32, 2, 1), (32, 1, 1), (64, 2, 1), (64, 1, 1), (96, 1, 2))
#: Units of the setup's embedding (``with_setup``).
SETUP_UNITS = 16


def _heads(features: keras.KerasTensor) -> list[keras.KerasTensor]:
    return [
        layers.Dense(len(TECHNIQUES), activation="softmax", name=OUTPUTS[0])(features),
        layers.Dense(len(GEOMETRIES), activation="softmax", name=OUTPUTS[1])(features),
        layers.Dense(len(FEATURES), activation="sigmoid", name=OUTPUTS[2])(features),
    ]


def lenet(dropout: float = 0.5) -> keras.Model:
    """The seed's LeNet with the three heads (about 200M multiply-adds per 128 x 128 image)."""
    images = keras.Input((INPUT_SIDE_PX, INPUT_SIDE_PX, N_CHANNELS), name="images")
    x = images
    for filters in LENET_FILTERS:
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.BatchNormalization()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(LENET_DENSE[0], activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(LENET_DENSE[1], activation="relu")(x)
    return keras.Model(images, _heads(x), name="scattering_lenet")


class ClassActivationMaps(layers.Layer):
    """Grad-CAM of every label for heads linear in the global average of the feature maps ``A``.

    ``maps[..., j] = sum_k W[k, j] A[..., k]`` with ``W`` the heads' kernels concatenated (techniques, geometries,
    features): for a score ``s_j = b_j + sum_k W[k, j] mean(A_k)`` the Grad-CAM weight of channel ``k`` is
    ``W[k, j]`` (up to the constant 1 / area), so this is Grad-CAM before its final ReLU.
    """

    def __init__(self, heads: list[layers.Dense], **kwargs) -> None:
        super().__init__(**kwargs)
        self.heads = heads

    def call(self, feature_maps: tf.Tensor) -> tf.Tensor:
        # With a setup input the heads also read the setup's embedding (the kernels' last rows): it is the
        # same everywhere in the image, so the maps use only the rows of the pooled feature maps.
        kernel = tf.concat([head.kernel for head in self.heads], axis=1)[: feature_maps.shape[-1]]
        return tf.einsum("nhwk,kj->nhwj", feature_maps, kernel)


def sorter_cnn(dropout: float = 0.3, with_setup: bool = False) -> keras.Model:
    """The served CNN: strided convolutions, global average pooling, linear heads and their Grad-CAM maps.

    Why this one: the last feature maps are averaged over the whole frame, so a ring, rod or horizon counts
    wherever the beam centre and the detector's modules put it (often off the image on real detectors); it costs
    about a quarter of the LeNet's multiply-adds; and its Grad-CAM is exact and part of the graph.

    ``with_setup``: a second input ``setup`` ``(N, SETUP_FEATURES)`` goes through a small dense layer whose
    output joins the pooled features before the heads. The codec normalises away the image's scale, and the q
    range the detector covers is what separates small- from wide-angle scattering when the pictures look alike
    (a mesophase's sharp orders and a calibrant's powder rings; a liquid-like peak and an amorphous halo).
    Trained with the setup withheld (zeros) for a fraction of the images, so a file without it is still sorted.
    """
    images = keras.Input((INPUT_SIDE_PX, INPUT_SIDE_PX, N_CHANNELS), name="images")
    x = layers.Conv2D(SORTER_STEM, 5, strides=2, padding="same", use_bias=False)(images)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters, stride, dilation in SORTER_LAYERS:
        x = layers.Conv2D(filters, 3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    feature_maps = x
    pooled = layers.GlobalAveragePooling2D()(feature_maps)
    pooled = layers.Dropout(dropout)(pooled)
    inputs = [images]
    if with_setup:
        setup = keras.Input((SETUP_FEATURES,), name="setup")
        embedded = layers.Dense(SETUP_UNITS, activation="relu", name="setup_embedding")(setup)
        pooled = layers.Concatenate(name="pooled_and_setup")([pooled, embedded])
        inputs.append(setup)
    heads = _heads(pooled)
    dense = [head._keras_history.operation for head in heads]
    maps = ClassActivationMaps(dense, name=CAM_OUTPUT)(feature_maps)
    return keras.Model(inputs if with_setup else images, [*heads, maps], name="scattering_sorter_cnn")


def load_trunk(network: keras.Model, weights_path: str, dropout: float = 0.3) -> None:
    """Start ``network`` from a setup-less sorter's weights: the convolutions as they are, the heads' rows of the
    pooled features copied (their setup rows keep their initial values)."""
    source = sorter_cnn(dropout)
    source.load_weights(weights_path)
    by_name = {layer.name: layer for layer in source.layers}
    for layer in network.layers:
        if layer.name in OUTPUTS:
            kernel, bias = by_name[layer.name].get_weights()
            new_kernel, _ = layer.get_weights()
            new_kernel[: kernel.shape[0]] = kernel
            layer.set_weights([new_kernel, bias])
    skip = {*OUTPUTS, CAM_OUTPUT, "setup_embedding"}  # the heads (above), their maps, the new embedding
    trunk = [layer for layer in source.layers if layer.weights and layer.name not in skip]
    target = [layer for layer in network.layers if layer.weights and layer.name not in skip]
    for old, new in zip(trunk, target, strict=True):
        new.set_weights(old.get_weights())


def load_from_onnx(network: keras.Model, onnx_path: str, images: np.ndarray, setup: np.ndarray | None = None) -> None:
    """Start ``network`` from a served version's ONNX graph, for when its Keras weights are gone.

    The export folds each batch normalisation into the convolution before it (kernel and bias). Batch
    normalisation is affine, so the folded graph is undone exactly: each convolution keeps the folded kernel,
    and its batch normalisation gets the mean ``m`` and variance ``v`` of that convolution's output (bias
    excluded) over ``images`` as moving statistics, ``gamma = sqrt(v + eps)`` and ``beta = m + bias``. The
    inference output is then the ONNX graph's, and in training the batch statistics start close to ``m`` and
    ``v``, so training goes on from where the served version stopped.

    Parameters
    ----------
    network : keras.Model
        A :func:`sorter_cnn` of the same architecture (``with_setup`` as the graph).
    onnx_path : str
        The served ``model.onnx``.
    images : numpy.ndarray
        float32 ``(N, 128, 128, 2)`` codec images whose statistics fill the moving averages (some hundreds).
    setup : numpy.ndarray, optional
        Their ``setup`` input, for a network that takes one.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(onnx_path).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    convolutions = [
        (initializers[node.input[1]].transpose(2, 3, 1, 0), initializers[node.input[2]])
        for node in graph.node
        if node.op_type == "Conv"
    ]
    matmuls = {node.input[1]: initializers[node.input[1]] for node in graph.node if node.op_type == "MatMul"}
    adds = {node.input[0]: node.input[1] for node in graph.node if node.op_type == "Add"}
    dense_of = {}  # Keras dense layer name -> (kernel, bias), from MatMul + Add node pairs
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and node.output[0] in adds:
            layer_name = node.input[1].split("/")[1].rsplit("_", 1)[0]
            dense_of[layer_name] = (matmuls[node.input[1]], initializers[adds[node.output[0]]])
    missing = {layer.name for layer in network.layers if isinstance(layer, layers.Dense)} - set(dense_of)
    if missing:
        raise ValueError(f"{onnx_path}: no MatMul + Add weights found for the dense layers {sorted(missing)}")
    conv_layers = [layer for layer in network.layers if isinstance(layer, layers.Conv2D)]
    norm_layers = [layer for layer in network.layers if isinstance(layer, layers.BatchNormalization)]
    if len(conv_layers) != len(convolutions) or len(norm_layers) != len(convolutions):
        raise ValueError(f"{onnx_path}: {len(convolutions)} convolutions, the network has {len(conv_layers)}")
    # Pass 1: batch normalisation as "+ bias" (unit variance after eps), so the network computes the ONNX graph.
    for conv, norm, (kernel, bias) in zip(conv_layers, norm_layers, convolutions, strict=True):
        conv.set_weights([kernel])
        ones = np.ones_like(bias)
        norm.set_weights([ones, bias, np.zeros_like(bias), ones - norm.epsilon])
    for name, weights in dense_of.items():
        network.get_layer(name).set_weights(list(weights))
    # Pass 2: the convolutions' own output statistics become the moving averages.
    probe = keras.Model(network.inputs, [conv.output for conv in conv_layers])
    outputs = probe.predict([images, setup] if setup is not None else images, batch_size=128, verbose=0)
    for norm, (_, bias), z in zip(norm_layers, convolutions, outputs, strict=True):
        mean, variance = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
        norm.set_weights([np.sqrt(variance + norm.epsilon), mean + bias, mean, variance])
