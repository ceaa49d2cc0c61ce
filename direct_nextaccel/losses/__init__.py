"""Image losses with DIRECT's loss signature (:mod:`.image`) and offline perceptual networks (:mod:`.perceptual`).

Nothing is imported here: :mod:`.image` imports DIRECT's engine module, which users of :mod:`.perceptual` alone
(the metrics) should not pay for.
"""
