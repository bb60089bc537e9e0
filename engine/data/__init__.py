"""The data layer: image files (image_files.py), MATLAB's bicubic downscaling (imresize.py), images as tensors
and their LR references (tensors.py), the training crops and their loader (crops.py), and one decoded copy
of the data per node (node_copy.py). It knows nothing of the network or of training."""
