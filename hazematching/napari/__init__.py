"""napari plugin (``pip install "hazematching[napari]"``): a dock widget that dehazes the layer on
screen with a run or an exported package, and a sample image. Nothing here is imported by
``import hazematching``, so the core install never pulls Qt."""
