"""Reporting on finished experiment results: the paper's tables (and Table 5, beyond the paper: a decoder LLM), the
verdicts on its claims, the generated pages and the figures. scripts/make_tables.py and scripts/plot_results.py are
the command lines over it.

- runs.py: result folders loaded into one record per run
- paper.py: the paper's tables, numbers, task and model analogues and claimed orderings (Table 5's: our hypotheses)
- measures.py: what an ordering compares (accuracy, answer loss) and which way is better
- verdicts.py: paired t-tests, Holm's correction and the link and claim verdicts
- cells.py: cell statistics, the cells shared with Table 1 and the claims judged per block
- claim_lines.py: the judged claims in words (claim lines, test lines, bullets)
- markdown.py: the tables as markdown, with the legend and the ceilings
- pages.py: the results page and the README's generated part
- figures.py: the matplotlib figures
"""
