"""What slide models show: attention heatmaps, phenotype clusters, slide-level metrics and reports."""
