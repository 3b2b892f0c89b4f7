/*
 * etmemd_task_exp.h: struct task and struct task_pid, as upstream's header of that name.
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_TASK_EXP_H
#define ETMEMD_TASK_EXP_H

#include "etmem_engine.h"

#endif
