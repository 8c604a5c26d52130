"""Data layer: the PNG layout (``layout``), generators (``synthetic``, ``moving_mnist``), HDF5 packs
(``pack``), frame sources (``sources``) and the window datasets and loaders (``datasets``).

Submodules are imported explicitly (``from data.pack import pack_dataset``) so that generating or
packing data never imports torch.
"""
