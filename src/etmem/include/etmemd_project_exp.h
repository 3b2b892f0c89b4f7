/*
 * etmemd_project_exp.h: struct project and struct page_scan, as upstream's header of that name.
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_PROJECT_EXP_H
#define ETMEMD_PROJECT_EXP_H

#include "etmem_engine.h"

#endif
