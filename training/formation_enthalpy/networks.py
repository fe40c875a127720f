"""Keras networks for formation enthalpy from the 86-element fraction vector.

* :func:`elemnet` is the seed's reference (dissertation Table 3.1): 17 fully
  connected ReLU layers 1024x4, 512x3, 256x3, 128x3, 64x2, 32, 1, with dropout
  (keep 0.8, 0.9, 0.7, 0.8) after layers 4, 7, 10 and 13.
* :func:`irnet` with ``physics=True`` (the served model) first appends, inside the graph,
  Magpie-style statistics of 22 element properties (fraction-weighted mean and mean
  absolute deviation, min, max, range over the elements present): RF-Phys beating RF-Comp
  shows these attributes matter at this data size. The property table is a constant of
  the graph, so the model input stays the 86 fractions and serving needs no matminer.
* :func:`irnet` is the improvement: IRNet-style individual residual blocks
  (dissertation chapter 4), each ``Dense -> BatchNorm -> ReLU`` with a shortcut
  around it (a linear projection where the width changes), in a narrower stack
  so that an ensemble of several members stays small enough to commit.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

N_INPUTS = 86

ELEMNET_LAYERS: tuple[tuple[int, float], ...] = (
    # (units, dropout rate applied after this layer; 0 = none). Keep prob p -> rate 1 - p.
    (1024, 0), (1024, 0), (1024, 0), (1024, 0.2),
    (512, 0), (512, 0), (512, 0.1),
    (256, 0), (256, 0), (256, 0.3),
    (128, 0), (128, 0), (128, 0.2),
    (64, 0), (64, 0),
    (32, 0),
)  # fmt: skip

#: IRNet-style widths: 17 layers (16 residual blocks + linear output), as in the seed's 17-layer IRNet.
IRNET_WIDTHS: tuple[int, ...] = (512, 512, 512, 512, 256, 256, 256, 256, 128, 128, 128, 128, 64, 64, 64, 32)


MAGPIE_PROPERTIES: tuple[str, ...] = (
    "Number",
    "MendeleevNumber",
    "AtomicWeight",
    "MeltingT",
    "Column",
    "Row",
    "CovalentRadius",
    "Electronegativity",
    "NsValence",
    "NpValence",
    "NdValence",
    "NfValence",
    "NValence",
    "NsUnfilled",
    "NpUnfilled",
    "NdUnfilled",
    "NfUnfilled",
    "NUnfilled",
    "GSvolume_pa",
    "GSbandgap",
    "GSmagmom",
    "SpaceGroupNumber",
)


def element_property_table() -> np.ndarray:
    """(86, 22) Magpie element properties (matminer's offline tables), z-scored per property; NaN -> 0 (the mean)."""
    from matminer.utils.data import MagpieData
    from pymatgen.core import Element

    from matserve.codecs.formation_enthalpy import ELEMENTS

    magpie = MagpieData()
    table = np.array(
        [[magpie.get_elemental_property(Element(el), prop) for prop in MAGPIE_PROPERTIES] for el in ELEMENTS],
        dtype=np.float64,
    )
    mean, std = np.nanmean(table, axis=0), np.nanstd(table, axis=0)
    table = (table - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(table).astype(np.float32)


@keras.saving.register_keras_serializable(package="matserve")
class ElementStatistics(layers.Layer):
    """Fraction-weighted mean, mean absolute deviation, min, max and range of element properties.

    Input (n, 86) atomic fractions; output (n, 5 * P) for a constant (86, P) property table.
    """

    def __init__(self, table: list | np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = np.asarray(table, dtype=np.float32)

    def build(self, input_shape) -> None:
        self.properties = self.add_weight(
            shape=self.table.shape, initializer=keras.initializers.Constant(self.table), trainable=False,
            name="element_properties",
        )  # fmt: skip

    def call(self, fractions):
        table = self.properties[None, :, :]  # (1, 86, P)
        weights = fractions[:, :, None]  # (n, 86, 1)
        present = ops.cast(weights > 0, "float32")
        mean = ops.matmul(fractions, self.properties)  # (n, P)
        deviation = ops.sum(weights * ops.abs(table - mean[:, None, :]), axis=1)
        high = ops.max(table * present - 1e4 * (1.0 - present), axis=1)
        low = ops.min(table * present + 1e4 * (1.0 - present), axis=1)
        return ops.concatenate([mean, deviation, high, low, high - low], axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "table": self.table.tolist()}


def elemnet(seed: int = 0) -> keras.Model:
    """The seed's 17-layer ElemNet (Table 3.1)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((N_INPUTS,), name="element_fractions")
    x = inputs
    for i, (units, rate) in enumerate(ELEMNET_LAYERS):
        x = layers.Dense(units, activation="relu", kernel_initializer=init, name=f"fc{i + 1}")(x)
        if rate:
            x = layers.Dropout(rate, seed=seed + i, name=f"dropout{i + 1}")(x)
    outputs = layers.Dense(1, kernel_initializer=init, name="formation_enthalpy_ev_per_atom")(x)
    return keras.Model(inputs, outputs, name="elemnet")


def irnet(
    seed: int = 0, widths: tuple[int, ...] = IRNET_WIDTHS, name: str = "irnet", physics: bool = False
) -> keras.Model:
    """IRNet-style residual network: ``x + ReLU(BN(Dense(x)))`` per layer, projections where width changes.

    With ``physics=True`` the fractions are concatenated with :class:`ElementStatistics` first.
    """
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input((N_INPUTS,), name="element_fractions")
    x = inputs
    if physics:
        stats = ElementStatistics(element_property_table(), name="element_statistics")(inputs)
        x = layers.Concatenate(name="fractions_and_statistics")([inputs, stats])
    for i, units in enumerate(widths):
        h = layers.Dense(units, kernel_initializer=init, name=f"fc{i + 1}")(x)
        h = layers.BatchNormalization(name=f"bn{i + 1}")(h)
        h = layers.ReLU(name=f"relu{i + 1}")(h)
        shortcut = x if x.shape[-1] == units else layers.Dense(units, use_bias=False, name=f"proj{i + 1}")(x)
        x = layers.Add(name=f"res{i + 1}")([shortcut, h])
    outputs = layers.Dense(1, kernel_initializer=init, name="formation_enthalpy_ev_per_atom")(x)
    return keras.Model(inputs, outputs, name=name)


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One graph that runs every member and returns the mean and the standard deviation.

    Outputs ``formation_enthalpy_ev_per_atom`` (n, 1) and ``uncertainty_ev_per_atom`` (n, 1),
    the latter the population standard deviation of the members' predictions.
    """
    inputs = keras.Input((N_INPUTS,), name="element_fractions")
    stacked = layers.Concatenate(axis=-1)([m(inputs) for m in members])
    mean = layers.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True), name="formation_enthalpy_ev_per_atom")(
        stacked
    )
    std = layers.Lambda(lambda t: keras.ops.std(t, axis=-1, keepdims=True), name="uncertainty_ev_per_atom")(stacked)
    return keras.Model(inputs, [mean, std], name="ensemble")
