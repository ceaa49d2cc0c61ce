"""Training and test data in the fastMRI brain layout: the HDF5 writer (:mod:`.fastmri_h5`), multi-coil simulation
from real magnitude volumes (:mod:`.simulate`) and conversion of real raw k-space (:mod:`.raw_kspace`)."""
