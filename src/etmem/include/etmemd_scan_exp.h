/*
 * etmemd_scan_exp.h: struct vma, struct vmas and the scan functions, as upstream's header of that name.
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_SCAN_EXP_H
#define ETMEMD_SCAN_EXP_H

#include "etmem_engine.h"

#endif
