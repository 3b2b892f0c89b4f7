/*
 * etmemd_exp.h: struct page_refs and enum page_type, as upstream's header of that name.
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_EXP_H
#define ETMEMD_EXP_H

#include "etmem_engine.h"

#endif
