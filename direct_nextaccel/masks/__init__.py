"""Undersampling masks usable by DIRECT; :mod:`direct_nextaccel.masks.nested` holds the nested multi-acceleration
families NextAccel trains and evaluates on."""
