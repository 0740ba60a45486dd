"""The paper's diagnostics: the Appendix B stage ablation check, Appendix G profiling, and the
localization-collapse probes (README, Diagnostics)."""
