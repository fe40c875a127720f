"""The sorter's label sets (shared by the simulator, the networks and the card; no TensorFlow here).

``features`` are multi-label and mean, in any technique:

* ``rings``: complete (isotropic) sharp rings: powder Debye-Scherrer rings, calibrant rings, the orders of a
  randomly oriented mesophase (above the horizon only, in grazing incidence);
* ``arcs``: ring segments confined in azimuth: textured powders, oriented mesophases, fibre-textured films;
* ``rods``: streaks: Bragg and correlation rods of lateral order in GISAXS, equatorial streaks of fibres;
* ``bragg_peaks``: discrete spots: single crystals, coarse grains, superlattices, sharply oriented films;
* ``diffuse_halo``: broad rings: amorphous and polymer halos, liquid-like (hard-sphere) correlation peaks.
"""

TECHNIQUES = ("saxs", "waxs", "gisaxs", "giwaxs")
GEOMETRIES = ("transmission", "grazing")
FEATURES = ("rings", "arcs", "rods", "bragg_peaks", "diffuse_halo")
GEOMETRY_OF_TECHNIQUE = {"saxs": "transmission", "waxs": "transmission", "gisaxs": "grazing", "giwaxs": "grazing"}
