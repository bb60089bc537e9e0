"""The data layer: image files (images.py), MATLAB's bicubic downscaling (imresize.py), images as tensors and
their LR references (tensors.py), the training crops and their loader (loader.py), and one decoded copy
of the data per node (node_copy.py). It knows nothing of the network or of training."""
