"""What both methods stand on: the intensity convention, the image helpers, the engine iteration and the errors.

Layering: :mod:`direct_nextaccel.modules` and :mod:`direct_nextaccel.core` import no method package;
:mod:`direct_nextaccel.nextaccel` and :mod:`direct_nextaccel.miar` build on them and never on each other.
"""
