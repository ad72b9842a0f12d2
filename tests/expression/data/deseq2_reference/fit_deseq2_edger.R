#!/usr/bin/env Rscript
## Reference fits of the expression stage's designs with DESeq2 and edgeR (QL).
## Run from this directory:  Rscript fit_deseq2_edger.R
## Reads counts.csv and the design/contrast matrices written by make_datasets.py; writes
## deseq2_results.csv, edger_results.csv, filter_by_expr.csv and versions.txt.

suppressPackageStartupMessages({
  library(DESeq2)
  library(edgeR)
})

args <- commandArgs(trailingOnly = FALSE)
file_arg <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(file_arg)) dirname(normalizePath(file_arg)) else getwd()
setwd(here)

counts <- t(as.matrix(read.csv("counts.csv", row.names = 1, check.names = FALSE)))
deseq_rows <- list()
edger_rows <- list()
filter_rows <- list()
for (fit in c("across_patients", "patients_blocked")) {
  X <- as.matrix(read.csv(sprintf("design_%s.csv", fit), row.names = 1, check.names = FALSE))
  C <- as.matrix(read.csv(sprintf("contrasts_%s.csv", fit), row.names = 1, check.names = FALSE))
  y <- counts[, rownames(X)]
  # DESeq2 with the model matrix as given (default size factors, fitting and Cook's
  # handling; no independent filtering, as the stage reports every tested gene)
  coldata <- data.frame(row.names = colnames(y), dummy = rep(1, ncol(y)))
  dds <- DESeqDataSetFromMatrix(y, coldata, design = ~1)
  dds <- DESeq(dds, full = X, quiet = TRUE)
  for (k in rownames(C)) {
    res <- results(dds, contrast = as.numeric(C[k, colnames(X)]), independentFiltering = FALSE)
    deseq_rows[[length(deseq_rows) + 1]] <- data.frame(
      fit = fit, contrast = k, gene = rownames(res), log2fc = res$log2FoldChange,
      lfc_se = res$lfcSE, pvalue = res$pvalue, base_mean = res$baseMean)
  }
  # edgeR quasi-likelihood (TMM normalization)
  d <- DGEList(y)
  keep <- filterByExpr(d, design = X)
  filter_rows[[length(filter_rows) + 1]] <- data.frame(fit = fit, gene = rownames(y), keep = keep)
  d <- calcNormFactors(d)
  d <- estimateDisp(d, X)
  q <- glmQLFit(d, X)
  for (k in rownames(C)) {
    tt <- topTags(glmQLFTest(q, contrast = as.numeric(C[k, colnames(X)])), n = Inf, sort.by = "none")$table
    edger_rows[[length(edger_rows) + 1]] <- data.frame(
      fit = fit, contrast = k, gene = rownames(tt), log2fc = tt$logFC, pvalue = tt$PValue)
  }
}
write.csv(do.call(rbind, deseq_rows), "deseq2_results.csv", row.names = FALSE)
write.csv(do.call(rbind, edger_rows), "edger_results.csv", row.names = FALSE)
write.csv(do.call(rbind, filter_rows), "filter_by_expr.csv", row.names = FALSE)
writeLines(c(R.version.string, paste("DESeq2", packageVersion("DESeq2")),
             paste("edgeR", packageVersion("edgeR")), paste("limma", packageVersion("limma"))),
           "versions.txt")
